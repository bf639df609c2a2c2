"""Locust load for the latency gate of the reference clients service.

Each simulated user works in ``DUALWRITE_GATE_WORKSPACE`` (an existing workspace with 100+
clients, e.g. a seeded one: its first page gives the ids to read) or, when unset, in a workspace of
its own where it first creates ``DUALWRITE_GATE_CLIENTS`` clients (default 100, so the bulk read
returns 100). Then it mixes single reads, bulk reads of 100, creates, updates
and searches. Request names are route templates, so per-endpoint percentiles line up with the
gate's thresholds (see ``clients_service.gate``).

    API_TOKEN=... locust -f src/clients_service/loadtest/locustfile.py --headless -u 8 -r 8 -t 20s \
        --host http://127.0.0.1:8000 --csv /tmp/gate

``dualwrite gate`` runs exactly this as a subprocess and records the verdict (it ships in the
wheel, outside any package ``__init__``, so importing ``clients_service`` never imports Locust).
"""

from __future__ import annotations

import os
import random
import uuid

from locust import HttpUser, between, task

from clients_service.gate import BULK_READ, SINGLE_READ

TOKEN = os.environ.get("API_TOKEN", "")
CLIENTS_PER_USER = int(os.environ.get("DUALWRITE_GATE_CLIENTS", "100"))
SHARED_WORKSPACE = os.environ.get("DUALWRITE_GATE_WORKSPACE", "")

CREATE = "POST /workspaces/{ws}/clients"
UPDATE = "PATCH /workspaces/{ws}/clients/{id}"
SEARCH = "GET /workspaces/{ws}/clients/search?email="


def fake_client(i: int) -> dict[str, str]:
    first = random.choice(["Ana", "Ben", "Chloé", "Dmitri", "Elena", "Farid", "Grace"])
    last = random.choice(["Abara", "Bianchi", "Castillo", "Dubois", "Eriksen", "Müller"])
    return {
        "first_name": first,
        "last_name": last,
        "email": f"{first.lower()}.{uuid.uuid4().hex[:8]}@example.org",
        "phone": f"+1 555 {random.randint(100, 999)} {random.randint(1000, 9999)}",
        "address": f"{random.randint(1, 999)} Oak St, Springfield",
        "medical_history": "Reports improvement with CBT homework. " * 6,
        "emergency_contact_name": "Sam Doe",
        "emergency_contact_phone": "+1 555 000 1111",
    }


class ClinicUser(HttpUser):
    wait_time = between(0.01, 0.05)

    def on_start(self) -> None:
        if TOKEN:
            self.client.headers["Authorization"] = f"Bearer {TOKEN}"
        self.ids: list[str] = []
        self.emails: list[str] = []
        if SHARED_WORKSPACE:
            self.ws = SHARED_WORKSPACE
            resp = self.client.get(f"/workspaces/{self.ws}/clients?limit=100", name=BULK_READ)
            if resp.status_code == 200:
                for item in resp.json().get("items", []):
                    self.ids.append(item["id"])
                    if item.get("email"):
                        self.emails.append(item["email"])
            return
        self.ws = str(uuid.uuid4())
        for i in range(CLIENTS_PER_USER):
            self._create(i)

    def _create(self, i: int) -> None:
        body = fake_client(i)
        resp = self.client.post(f"/workspaces/{self.ws}/clients", json=body, name=CREATE)
        if resp.status_code == 201:
            self.ids.append(resp.json()["id"])
            self.emails.append(body["email"])

    @task(10)
    def read_one(self) -> None:
        if self.ids:
            cid = random.choice(self.ids)
            self.client.get(f"/workspaces/{self.ws}/clients/{cid}", name=SINGLE_READ)

    @task(3)
    def read_bulk(self) -> None:
        self.client.get(f"/workspaces/{self.ws}/clients?limit=100", name=BULK_READ)

    @task(2)
    def create(self) -> None:
        self._create(len(self.ids))

    @task(2)
    def update(self) -> None:
        if self.ids:
            cid = random.choice(self.ids)
            self.client.patch(
                f"/workspaces/{self.ws}/clients/{cid}",
                json={"phone": f"+1 555 {random.randint(100, 999)} {random.randint(1000, 9999)}"},
                name=UPDATE,
            )

    @task(1)
    def search(self) -> None:
        if self.emails:
            email = random.choice(self.emails)
            self.client.get(
                f"/workspaces/{self.ws}/clients/search", params={"email": email}, name=SEARCH
            )
