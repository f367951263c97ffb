"""Tests of the web app (msbd.app, scripts/app.py); a package so that its live server lives only as long as
these tests (the package-scoped app_server fixture)."""
