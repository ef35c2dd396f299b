"""The built-in organism tasks and audits: importing this module registers them.

>>> from activation_oracles.evals.organism import organism_tasks
>>> sorted(organism_tasks())
['em-narrow-advice', 'em-reward-hacks', 'gender', 'personaqa', 'ssc', 'subliminal', 'taboo', 'trigger-backdoor']
>>> from activation_oracles.evals.audit_task import audit_tasks
>>> sorted(audit_tasks())
['backdoor', 'classification', 'gender', 'personaqa', 'ssc', 'subliminal', 'taboo']
"""

from __future__ import annotations

from . import classification_audit, gender, misalignment, personaqa, ssc, subliminal, taboo, trait_audits  # noqa: F401
