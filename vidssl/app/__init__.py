"""What the command line stands on: the demo, the install check, the preview of what a task sees, and the
helpers `tools/` share (`cli`). Nothing below `vidssl.app` imports it."""
