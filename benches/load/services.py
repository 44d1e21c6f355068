#!/usr/bin/env python3
"""Prints N Services (one port each, ClusterIPs from 10.96.0.0/12) and their
EndpointSlices (10 ready endpoints on 3 nodes each) as one YAML stream: the
documents the node proxy and apply load benches start from.

Usage: services.py N > services.yaml
"""
import sys

n = int(sys.argv[1])
out = sys.stdout
for i in range(n):
    if i:
        out.write("---\n")
    out.write(f"""apiVersion: v1
kind: Service
metadata: {{name: s{i}, namespace: default}}
spec:
  clusterIP: 10.{96 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}
  selector: {{app: s{i}}}
  ports: [{{name: http, port: 80, targetPort: 8080}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: s{i}-abcde
  namespace: default
  labels: {{kubernetes.io/service-name: s{i}}}
addressType: IPv4
ports: [{{name: http, port: 8080, protocol: TCP}}]
endpoints:
""")
    for j in range(10):
        e = i * 10 + j
        out.write(f"""- addresses: ["10.{128 + e // 65536}.{(e >> 8) & 255}.{e & 255}"]
  conditions: {{ready: true, serving: true, terminating: false}}
  nodeName: node-{j % 3}
  targetRef: {{kind: Pod, namespace: default, name: s{i}-{j}, uid: 0b5f6a9e-1c2d-4e5f-8a9b-{i:06d}{j:06d}}}
""")
