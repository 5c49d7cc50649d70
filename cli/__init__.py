"""The `microscope` command: the composition root, the one package that imports both the web
server (`app`) and the jobs (`workers`)."""
