"""A clinic's patients service: an existing SQLAlchemy ORM app adopting dualwrite.

The table has another shape than the reference ``clients``: a ``bigint GENERATED ALWAYS AS
IDENTITY`` key, the ``clinic`` schema, a date of birth, a JSON intake form, a balance in
``numeric(10,2)``, a timestamp and an e-mail that is UNIQUE per clinic. The app's code is plain
ORM (:mod:`clinic_app.models`, :mod:`clinic_app.app`); adopting dualwrite added one line to the
models (``encrypted(Patient, PATIENTS_PII)``) and the binding at start-up.
"""
