"""Routing: the decision of who is told what, on which channel.

"Router" here means that decision, not a grouping of request handlers. The
package is pure except for :mod:`router.state` and :mod:`router.recipients`,
which read and write Redis; it never imports Kafka code.
"""
