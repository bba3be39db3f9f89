from rest_framework import serializers
from rest_framework.pagination import LimitOffsetPagination

from chatserver.fields import QueryIntegerField
from chatserver.urls_converters import MAX_ID


class PageQuery(serializers.Serializer):
    limit = QueryIntegerField(min_value=1, max_value=200, required=False, default=50)
    # OFFSET is a BIGINT to PostgreSQL: beyond it, a 400 rather than a database error.
    offset = QueryIntegerField(min_value=0, max_value=MAX_ID, required=False, default=0)


class Pagination(LimitOffsetPagination):
    """`?limit=&offset=` -> `{count, next, previous, results}`; 50 by default, 200 at most.

    Unlike DRF's, which falls back to the defaults for a limit or offset it cannot read, a
    bad one is a 400 `validation_error` naming it: a client's bug shows instead of paging
    silently from the start.
    """

    default_limit = 50
    max_limit = 200

    def paginate_queryset(self, queryset, request, view=None):
        query = PageQuery(data=request.query_params)
        query.is_valid(raise_exception=True)
        self._query = query.validated_data
        return super().paginate_queryset(queryset, request, view)

    def get_limit(self, request):
        return self._query["limit"]

    def get_offset(self, request):
        return self._query["offset"]

    def get_schema_operation_parameters(self, view):
        parameters = super().get_schema_operation_parameters(view)
        bounds = {"limit": {"minimum": 1, "maximum": self.max_limit, "default": self.default_limit},
                  "offset": {"minimum": 0, "maximum": MAX_ID, "default": 0}}
        for parameter in parameters:
            parameter["schema"].update(bounds.get(parameter["name"], {}))
        return parameters
