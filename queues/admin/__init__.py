"""Django admin for queues: the operators' console.

- queue.py: the queue list, the read-only queue page (steps, edges), stop action and button.
- start.py: the "Start a queue" page (custom admin view registered by QueueAdmin.get_urls).
- step.py: the read-only step (QueueRequest) pages.
- display.py: badges and progress bars shared by both.
"""
from django.contrib import admin

from queues.admin import queue, step  # noqa: F401  (registers the ModelAdmins)

admin.site.site_header = "StreamForge Queue Manager"
admin.site.site_title = "StreamForge Queue Manager"
admin.site.index_title = "Operations console"
