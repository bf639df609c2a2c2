"""A generic latency-gate load: GET (or any method) a list of routes, named as given.

``dualwrite gate --route "GET /patients/1=50" --route "GET /patients?limit=100=400"`` runs this
file (it ships inside the package, outside any package ``__init__``, so importing dualwrite
never imports Locust) with the routes in ``DUALWRITE_GATE_ROUTES`` (a JSON list of
``{"method", "path", "name"}``); each request is named ``"<METHOD> <path>"``, the name the
threshold gives. ``API_TOKEN`` is sent as a bearer token when set.
"""

from __future__ import annotations

import json
import os
import random

from locust import HttpUser, between, task

ROUTES = json.loads(os.environ.get("DUALWRITE_GATE_ROUTES", "[]"))
TOKEN = os.environ.get("API_TOKEN", "")


class RoutesUser(HttpUser):
    wait_time = between(0.0, 0.02)

    @task
    def call_a_route(self) -> None:
        if not ROUTES:
            return
        route = random.choice(ROUTES)
        headers = {"Authorization": f"Bearer {TOKEN}"} if TOKEN else {}
        self.client.request(route["method"], route["path"], name=route["name"], headers=headers)
