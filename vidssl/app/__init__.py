"""What the command line stands on: the demo, the install check, the preview of what a task sees, and the
helpers `tools/` share (`cli`). Nothing below `vidssl.app` imports it."""

from vidssl.app.threads import prefer_passive_wait

# Before any tool imports torch: OpenMP reads its wait policy once, when torch loads it (see threads.py).
prefer_passive_wait()
