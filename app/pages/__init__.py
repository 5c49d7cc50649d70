"""One module per page, each building its page's data once, as a plain JSON-able dict.

Datasette style: the HTML route and its JSON twin both call the same builder, so whatever the
page shows is exactly what the API returns. Builders take the session and a URL builder
(app.urls.Urls, under the app's root path) and never see a request. Pages render whatever
has been computed and say plainly what has not: every builder that can come up empty fills
a `missing` list with sentences. What they refuse they refuse with a Problem.
"""

from app.pages.collections import collection_detail, collections_index
from app.pages.jobs import jobs_page
from app.pages.layer import export_layer, layer_page
from app.pages.models import model_detail, models_index
from app.pages.probe import default_layer, probe_form, probe_result
from app.pages.search import prompt_page, search_page
from app.pages.typographic import typographic_form, typographic_result
from app.pages.typographic_evals import typographic_evals_page
from app.pages.unit import unit_page
from app.pages.words import words_page

__all__ = [
    "collection_detail", "collections_index", "default_layer", "export_layer", "jobs_page", "layer_page", "model_detail",
    "models_index", "probe_form", "probe_result", "prompt_page", "search_page", "typographic_evals_page", "typographic_form", "typographic_result", "unit_page", "words_page",
]
