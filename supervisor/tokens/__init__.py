"""What a request needs of a profile, in tokens (and audio seconds): read by the proxy's
routing, held per model beside its handle."""
