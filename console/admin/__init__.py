"""Django admin for queues: the operators' console.

- queue.py: the queue list, the read-only queue page (steps, edges), stop action and button.
- start.py: the "Start a queue" page (custom admin view registered by QueueAdmin.get_urls).
- step.py: the read-only step (QueueRequest) pages.
- display.py: badges and progress bars shared by both; progress.py: what the bars and counts mean.
- live.py: the queue page's live JSON (cells, DAG nodes and edges, timeline); logs.py: the step log endpoint.
- listing.py: per-page figures of the list; bulk.py: bulk stop/retry behind a confirmation page.
- history.py: the audit trail (History panel, admin History page, Audit entries) and a step's earlier runs.
"""
from django.contrib import admin

from console.admin import history, queue, step  # noqa: F401  (registers the ModelAdmins)

admin.site.site_header = "StreamForge Queue Manager"
admin.site.site_title = "StreamForge Queue Manager"
admin.site.index_title = "Operations console"
# No public site behind the admin: instead of "View site" (a 404), the header links the API docs, Flower and
# /metrics (templates/admin/base_site.html).
admin.site.site_url = None
# The console's tables need the width; the app list is one click away on the home page.
admin.site.enable_nav_sidebar = False
