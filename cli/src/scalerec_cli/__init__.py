"""The scalerec command line."""
