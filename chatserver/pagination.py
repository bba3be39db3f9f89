from rest_framework.pagination import LimitOffsetPagination


class Pagination(LimitOffsetPagination):
    """`?limit=&offset=` -> `{count, next, previous, results}`; 50 by default, 200 at most."""

    default_limit = 50
    max_limit = 200
