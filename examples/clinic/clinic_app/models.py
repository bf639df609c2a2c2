"""The app's ORM models, as they were before dualwrite -- plus the one declaration."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from sqlalchemy import BigInteger, DateTime, ForeignKey, Identity, Numeric, String, Text, func
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from clinic_app.schema import PATIENTS_PII
from dualwrite import encrypted


class Base(DeclarativeBase):
    pass


class Patient(Base):
    __tablename__ = "patients"
    __table_args__ = ({"schema": "clinic"},)

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    clinic_id: Mapped[int]
    full_name: Mapped[str] = mapped_column(Text)
    email: Mapped[str] = mapped_column(String(320))
    date_of_birth: Mapped[dt.date | None]
    intake: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    balance: Mapped[Decimal | None] = mapped_column(Numeric(10, 2))
    last_visit: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    visits: Mapped[list[Visit]] = relationship(back_populates="patient", lazy="selectin")


class Visit(Base):
    __tablename__ = "visits"
    __table_args__ = ({"schema": "clinic"},)

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("clinic.patients.id"))
    note: Mapped[str] = mapped_column(Text)
    patient: Mapped[Patient] = relationship(back_populates="visits", lazy="raise")


PATIENTS = encrypted(Patient, PATIENTS_PII)
"""The one line dualwrite added: the fields of ``PATIENTS_PII`` are encrypted; bind it at
start-up (:func:`clinic_app.app.create_app`)."""
