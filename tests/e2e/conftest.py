from tests.e2e.workers import worker_database

__all__ = ["worker_database"]
