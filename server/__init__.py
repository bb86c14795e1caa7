"""Server: the only package that knows HTTP, websockets and the command line."""
