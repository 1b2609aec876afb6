"""The byte pipeline: processes, pipes and sockets between a send and its receivers."""
