"""What the benchmark scripts share; ``base2novel.py``, ``few_shot.py`` and ``zero_shot.py`` are thin on top.

A script parses its options (:mod:`.setting`), calls :func:`.context.start`, builds the list of
runs with :meth:`.context.Context.jobs`, runs them and formats what comes back. One concern per
module:

* :mod:`.setting`: the :class:`~.setting.Setting` shared by the runs, its presets, the options;
* :mod:`.methods`: the methods of the tables and the Trainer config each makes of a run;
* :mod:`.sources`: where the data comes from, the embedded world or real data (a YAML file),
  behind one interface;
* :mod:`.runs`: jobs, the worker pool, the cached hard prompt;
* :mod:`.reports`: means over splits, markdown tables, the curves plot, the results JSON;
* :mod:`.pooling`: several base2novel result files of one protocol as one sample of cells
  (``benchmarks/pool.py``);
* :mod:`.context`: a script from start to finish.
"""
