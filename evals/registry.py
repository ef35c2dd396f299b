"""The built-in organism tasks and audits: importing this module registers them.

>>> from activation_oracles.evals.organism import organism_tasks
>>> sorted(organism_tasks())
['gender', 'personaqa', 'ssc', 'taboo']
"""

from __future__ import annotations

from . import classification_audit, gender, personaqa, ssc, taboo  # noqa: F401
