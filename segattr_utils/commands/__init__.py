"""The ``segattr`` subcommands that take a model and your own traces to scores, a viewer and a dataset:
``score`` (:mod:`.score`), ``view`` (:mod:`.view`), ``export`` (:mod:`.export`), and ``estimate`` (:mod:`.estimate`) which needs only a model config; the folder ``score`` writes
(:mod:`.scores_dir`) and the trace files it reads (:mod:`.trace_file`)."""
