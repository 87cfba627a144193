"""The permissions of the domain, declared once: the API, the admin and the contract import them.

Django creates the model permissions (`view_queue`, `add_telemetryevent`) and the ones listed in
`Queue.Meta.permissions` (start, stop, override_image); these are their full names.
"""
VIEW_QUEUE = "queues.view_queue"
START_QUEUE = "queues.start_queue"
STOP_QUEUE = "queues.stop_queue"
# Not required by any view: the payload contract checks it to decide which `image` a start may name.
OVERRIDE_IMAGE = "queues.override_image"
# What a telemetry token's worker principal holds (the orchestration API's ingest endpoint).
INGEST_TELEMETRY = "queues.add_telemetryevent"
