"""The shared engines: batching, the teacher-forced pass, cached decoding."""
