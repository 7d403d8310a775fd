"""The tiny Linux guest: a Cirros-like disk image built here from Debian packages (`build.py`)."""
