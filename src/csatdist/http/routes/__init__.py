"""One router per concern; :func:`csatdist.http.app.create_app` includes them all."""
