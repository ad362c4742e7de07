#!/usr/bin/env python3
"""Publish tributary tasks the way a foreign system would: plain pika, one task per message.

Usage: publish_tasks.py AMQP_URL NAMESPACE JOB_ID [URL ...]
URLs come from the arguments, or from stdin (one per line) when there are none. Each URL
becomes one message {"v": 1, "job_id": ..., "url": ...} on exchange NAMESPACE with routing
key "fetch", persistent, content_type application/json, published with broker confirms.
Every other message carries an explicit task_id; the others leave it out, so the pipeline
derives one. Create the job's total first: `producer job create --total N --job-id JOB_ID`.
Prints {"published": N} on stdout; exits 1 with one line on stderr if anything fails.
"""

import json
import sys
import uuid

import pika


def main(argv):
    if len(argv) < 4:
        print("usage: publish_tasks.py AMQP_URL NAMESPACE JOB_ID [URL ...]", file=sys.stderr)
        return 2
    amqp_url, namespace, job_id = argv[1], argv[2], str(uuid.UUID(argv[3]))
    urls = argv[4:] or [line.strip() for line in sys.stdin if line.strip()]
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        for i, url in enumerate(urls):
            task = {"v": 1, "job_id": job_id, "url": url}
            if i % 2 == 0:
                task["task_id"] = str(uuid.uuid4())
            properties = pika.BasicProperties(
                content_type="application/json",
                delivery_mode=pika.DeliveryMode.Persistent,
                message_id=str(uuid.uuid4()),
            )
            # With confirms on, basic_publish raises if the broker nacks or cannot route it.
            channel.basic_publish(
                exchange=namespace,
                routing_key="fetch",
                body=json.dumps(task).encode(),
                properties=properties,
                mandatory=True,
            )
    finally:
        connection.close()
    print(json.dumps({"published": len(urls)}))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv))
    except Exception as e:  # one line, like the Rust binaries
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
