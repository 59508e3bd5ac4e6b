"""The Dagster layer: one asset per engine stage, checks, the job and its schedule.

Every module here is picked up by ``dg.load_from_defs_folder`` (see the root ``definitions.py``).
"""
