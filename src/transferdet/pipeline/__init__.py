"""The main job: every stage of the workflow in one resumable run, and the report that tells its story.

* :mod:`transferdet.pipeline.stages`: the stages in order, each one task with its settings;
* :mod:`transferdet.pipeline.runner`: runs them, each in its own numbered subfolder, skipping the complete;
* :mod:`transferdet.pipeline.report`: ``report.md`` with the plots, tables and headline numbers.
"""
