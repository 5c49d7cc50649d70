"""HTTP routes. Each page's data is built once (app.pages) and rendered twice: as HTML by
app.routes.pages and as JSON by app.routes.api, so the two can never disagree.
"""
