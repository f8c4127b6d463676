"""The stages behind notebooks 04 onwards, one module per notebook (stages 00-03 live in
:mod:`segattr_utils.pipeline`).

Each stage reads earlier stages' artifacts under ``results/<profile>/`` and writes its own folder
``results/<profile>/<NN_name>/``; per-record work is resumable through
:class:`segattr_utils.artifacts.RecordStore`.
"""
