from django.urls import Resolver404, get_resolver

from chatserver.exception_handler import DATABASE_UNAVAILABLE, database_unavailable


class OptionalTrailingSlashMiddleware:
    """Serve `/chats/1` as `/chats/1/` by rewriting the path, never by redirecting.

    A redirect would make clients resend a POST as GET, or drop its body; phones should
    not have to care about the slash. Only paths that do not resolve as they are and do
    resolve with the slash are rewritten.
    """

    def __init__(self, get_response):
        self.get_response = get_response
        self.resolver = get_resolver()

    def __call__(self, request):
        path = request.path_info
        if not path.endswith("/") and not self._resolves(path) and self._resolves(path + "/"):
            request.path_info = path + "/"
            request.path = request.path + "/"
        return self.get_response(request)

    def _resolves(self, path: str) -> bool:
        try:
            self.resolver.resolve(path)
        except Resolver404:
            return False
        return True


class DatabaseUnavailableMiddleware:
    """A view that finds the database unreachable answers 503 `database_unavailable`
    (the error envelope), not a logged 500. DRF views get the same from the exception
    handler; failures outside views from `handler500`."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_exception(self, request, exception):
        if isinstance(exception, DATABASE_UNAVAILABLE):
            return database_unavailable(exception)
        return None
