"""The relationship manager and the activities that act on a whole relationship."""
