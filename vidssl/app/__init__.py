"""The command line: every tool (``python -m vidssl.app.<tool>``, which ``tools/<tool>.py`` runs in a checkout),
the demo, the install check, and the helpers the tools share (`cli`, `errors`). Nothing below `vidssl.app`
imports it."""

from vidssl.app.threads import prefer_passive_wait

# Before any tool imports torch: OpenMP reads its wait policy once, when torch loads it (see threads.py).
prefer_passive_wait()
