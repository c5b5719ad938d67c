"""The main job: every stage of the workflow in one resumable run, and the report that tells its story.

* :mod:`transferdet.pipeline.runner`: the stages (synth, convert, train, evaluate, prune, retrain, ...,
  benchmark), each run as its own task in its own numbered subfolder, skipped when already complete.
* :mod:`transferdet.pipeline.report`: ``report.md`` with the plots, tables and headline numbers.
"""

from transferdet.pipeline.runner import STAGES, Stage, run

__all__ = ["STAGES", "Stage", "run"]
