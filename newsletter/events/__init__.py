"""The events wing: what happened after the hand-off (provider events, bounces,
complaints, mailto unsubscribes), and why a reader did or did not get an edition."""
