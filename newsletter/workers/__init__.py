"""The Celery face: the send task workers run (``newsletter worker``) and what
operators ask of the cluster (``newsletter workers``)."""
