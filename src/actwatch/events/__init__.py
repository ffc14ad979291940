"""The event-file format, written and read: tags, records, summaries, writer, reader."""
