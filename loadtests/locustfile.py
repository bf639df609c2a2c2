"""The reference service's latency-gate load (shipped in the wheel as
``clients_service/loadtest/locustfile.py``; this path is kept for ``locust -f``)."""

from clients_service.loadtest.locustfile import *  # noqa: F403
