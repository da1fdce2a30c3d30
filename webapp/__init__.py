"""The Django project: teams, searches, architectures and rewards, the API and the pages."""
