"""The queue list's pagination: by cursor (the default), or by page number for existing clients.

A cursor page costs the same anywhere in the history (`WHERE created_at < position ... LIMIT n` on an
index) and needs no `count(*)`; a page number costs an OFFSET plus a count, which is what older clients
of `?page=N` were given and still are. `?page_size=` works in both forms, up to API_MAX_PAGE_SIZE.
"""
from __future__ import annotations

from django.conf import settings
from django.core.paginator import Paginator
from django.db.models import QuerySet
from rest_framework.pagination import CursorPagination, PageNumberPagination



class SkipByIdPaginator(Paginator):
    """Django's paginator whose page query skips the rows before it by their ids only.

    `OFFSET n` makes PostgreSQL produce and throw away n rows: whole queue rows joined to their users,
    with any row expression (progress) evaluated for each. Here the OFFSET runs in a subquery that
    reads only the ids in list order (an index-only walk of the list-order indexes), and the outer
    query reads just the page's rows, with their progress counted in the same round trip. The rows and
    their order are those of the plain OFFSET; the count stays the exact `COUNT(*)`.
    """

    def _get_page(self, object_list, number, paginator):
        if isinstance(object_list, QuerySet) and object_list.query.is_sliced:
            ids = object_list.values("pk")
            object_list = self.object_list.filter(pk__in=ids)
        return super()._get_page(object_list, number, paginator)


class NumberedQueuePagination(PageNumberPagination):
    """`?page=N`: the original form (count, next and previous as page links)."""

    page_size_query_param = "page_size"
    django_paginator_class = SkipByIdPaginator

    def __init__(self):
        self.page_size = settings.REST_FRAMEWORK["PAGE_SIZE"]
        self.max_page_size = settings.API_MAX_PAGE_SIZE


class QueuePagination(CursorPagination):
    """Cursor pages over (-created_at, -id); `?page=N` (without `cursor`) answers in the page-number form.

    Rows inserted while a client walks the cursor are newer than its position, so every row that
    existed when the walk began is returned exactly once.
    """

    ordering = ("-created_at", "-id")
    page_size_query_param = "page_size"
    numbered_class = NumberedQueuePagination

    def __init__(self):
        self.page_size = settings.REST_FRAMEWORK["PAGE_SIZE"]
        self.max_page_size = settings.API_MAX_PAGE_SIZE
        self.numbered = None

    def wants_page_number(self, request) -> bool:
        return NumberedQueuePagination.page_query_param in request.query_params \
            and self.cursor_query_param not in request.query_params

    def paginate_queryset(self, queryset, request, view=None):
        if self.wants_page_number(request):
            self.numbered = self.numbered_class()
            return self.numbered.paginate_queryset(queryset, request, view)
        return super().paginate_queryset(queryset, request, view)

    def get_paginated_response(self, data):
        if self.numbered is not None:
            return self.numbered.get_paginated_response(data)
        return super().get_paginated_response(data)

    def get_paginated_response_schema(self, schema):
        # Either form: `count` only in the page-number form.
        response = super().get_paginated_response_schema(schema)
        response["properties"] = {
            "count": {"type": "integer", "description": "Only with `?page=N`."},
            **response["properties"],
        }
        return response

    def get_schema_operation_parameters(self, view):
        parameters = super().get_schema_operation_parameters(view)
        known = {p["name"] for p in parameters}
        extra = [p for p in self.numbered_class().get_schema_operation_parameters(view) if p["name"] not in known]
        return parameters + extra

    def get_html_context(self):
        if self.numbered is not None:
            return self.numbered.get_html_context()
        return super().get_html_context()
