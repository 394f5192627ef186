"""The gateway's HTTP/1.1 layer, owned end to end.

`h1` parses and serialises HTTP/1.1 without I/O; `seam` declares the interface of a response
that takes its connection over; `wsgi` runs a WSGI application for one request; `connection`
serves one client connection; `acceptor` accepts clients within the connection cap.
"""
