{{/* Names and labels */}}
{{- define "streams.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "streams.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "streams.selectorLabels" -}}
app.kubernetes.io/name: {{ include "streams.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "streams.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "streams.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "streams.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* Paths inside the containers */}}
{{- define "streams.stateDir" -}}/var/lib/streams{{- end -}}
{{- define "streams.tlsDir" -}}/etc/streams/tls{{- end -}}
{{- define "streams.probeDir" -}}/etc/streams/probe{{- end -}}

{{/*
Checks of the values that Kubernetes would not catch (the worker would, later, at start-up).
*/}}
{{- define "streams.validate" -}}
{{- $v := .Values -}}
{{- if not $v.app -}}{{- fail "app is required: MODULE:ATTRIBUTE of the App, e.g. shop.functions:app" -}}{{- end -}}
{{- if not (regexMatch "^[A-Za-z0-9_-]{1,63}$" (toString $v.streams.namespace)) -}}
{{- fail (printf "streams.namespace must be 1-63 of [A-Za-z0-9_-], got %q" (toString $v.streams.namespace)) -}}
{{- end -}}
{{- if not $v.kafka.bootstrapServers -}}{{- fail "kafka.bootstrapServers is required (host:port[,host:port])" -}}{{- end -}}
{{- if not (has $v.kafka.securityProtocol (list "PLAINTEXT" "SSL" "SASL_PLAINTEXT" "SASL_SSL")) -}}
{{- fail (printf "kafka.securityProtocol must be PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL, got %q" $v.kafka.securityProtocol) -}}
{{- end -}}
{{- if and (hasPrefix "SASL_" $v.kafka.securityProtocol) (not $v.kafka.sasl.mechanism) -}}
{{- fail (printf "kafka.sasl.mechanism is required with kafka.securityProtocol=%s" $v.kafka.securityProtocol) -}}
{{- end -}}
{{- if not (has $v.worker.mode (list "threads" "processes")) -}}
{{- fail (printf "worker.mode must be threads or processes, got %q" $v.worker.mode) -}}
{{- end -}}
{{- $known := list "router" "matcher" "executor" "timers" -}}
{{- $seen := dict -}}
{{- $roleNames := dict -}}
{{- if not $v.roles -}}{{- fail "roles must list at least one role" -}}{{- end -}}
{{- range $role := $v.roles -}}
{{- if not (regexMatch "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$" (toString $role.name)) -}}
{{- fail (printf "roles[].name must be a DNS label (lower-case letters, digits, '-'), got %q" (toString $role.name)) -}}
{{- end -}}
{{- if hasKey $roleNames $role.name -}}{{- fail (printf "roles: name %q appears twice" $role.name) -}}{{- end -}}
{{- $_ := set $roleNames $role.name true -}}
{{- range $p := splitList "," (toString $role.processors) -}}
{{- $p = trim $p -}}
{{- if not (has $p $known) -}}
{{- fail (printf "roles[%s].processors: unknown processor %q; allowed: router, matcher, executor, timers" $role.name $p) -}}
{{- end -}}
{{- if hasKey $seen $p -}}
{{- fail (printf "roles: processor %q is in both %q and %q; give each processor to one role and scale it with replicas" $p (get $seen $p) $role.name) -}}
{{- end -}}
{{- $_ := set $seen $p $role.name -}}
{{- end -}}
{{- if hasKey $role "mode" -}}
{{- if not (has $role.mode (list "threads" "processes")) -}}
{{- fail (printf "roles[%s].mode must be threads or processes, got %q" $role.name $role.mode) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- range $p := $known -}}
{{- if not (hasKey $seen $p) -}}
{{- fail (printf "roles: no role runs the %s processor; every processor must run somewhere or functions stall" $p) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
Which secret items are used, as a map item -> key in the Secret. Items: saslPassword, ca,
certificate, key, keyPassword.
*/}}
{{- define "streams.secretKeys" -}}
{{- $keys := dict -}}
{{- $kafka := .Values.kafka -}}
{{- if $kafka.existingSecret.name -}}
{{- range $item, $key := $kafka.existingSecret.keys -}}
{{- if $key -}}{{- $_ := set $keys $item $key -}}{{- end -}}
{{- end -}}
{{- else -}}
{{- if $kafka.sasl.password -}}{{- $_ := set $keys "saslPassword" "sasl-password" -}}{{- end -}}
{{- if $kafka.tls.ca -}}{{- $_ := set $keys "ca" "ca.crt" -}}{{- end -}}
{{- if $kafka.tls.certificate -}}{{- $_ := set $keys "certificate" "tls.crt" -}}{{- end -}}
{{- if $kafka.tls.key -}}{{- $_ := set $keys "key" "tls.key" -}}{{- end -}}
{{- if $kafka.tls.keyPassword -}}{{- $_ := set $keys "keyPassword" "ssl-key-password" -}}{{- end -}}
{{- end -}}
{{- toYaml $keys -}}
{{- end -}}

{{/* Data of the chart-managed Secret (empty when existingSecret is used or nothing is secret). */}}
{{- define "streams.secretData" -}}
{{- if not .Values.kafka.existingSecret.name -}}
{{- $kafka := .Values.kafka -}}
{{- $data := dict -}}
{{- if $kafka.sasl.password -}}{{- $_ := set $data "sasl-password" ($kafka.sasl.password | b64enc) -}}{{- end -}}
{{- if $kafka.tls.ca -}}{{- $_ := set $data "ca.crt" ($kafka.tls.ca | b64enc) -}}{{- end -}}
{{- if $kafka.tls.certificate -}}{{- $_ := set $data "tls.crt" ($kafka.tls.certificate | b64enc) -}}{{- end -}}
{{- if $kafka.tls.key -}}{{- $_ := set $data "tls.key" ($kafka.tls.key | b64enc) -}}{{- end -}}
{{- if $kafka.tls.keyPassword -}}{{- $_ := set $data "ssl-key-password" ($kafka.tls.keyPassword | b64enc) -}}{{- end -}}
{{- if $data -}}{{- toYaml $data -}}{{- end -}}
{{- end -}}
{{- end -}}

{{/* Name of the Secret the workers read, or "" when there is none. */}}
{{- define "streams.secretName" -}}
{{- if .Values.kafka.existingSecret.name -}}
{{- .Values.kafka.existingSecret.name -}}
{{- else if include "streams.secretData" . -}}
{{- include "streams.fullname" . -}}
{{- end -}}
{{- end -}}

{{/* The STREAMS_* settings that are not secret, as a map (ConfigMap data and the Job's env). */}}
{{- define "streams.configData" -}}
{{- $v := .Values -}}
{{- $keys := fromYaml (include "streams.secretKeys" .) -}}
{{- $data := dict
  "STREAMS_NAMESPACE" (toString $v.streams.namespace)
  "STREAMS_BOOTSTRAP_SERVERS" (toString $v.kafka.bootstrapServers)
  "STREAMS_SECURITY_PROTOCOL" (toString $v.kafka.securityProtocol)
  "STREAMS_STATE_DIR" (include "streams.stateDir" .)
-}}
{{- if $v.kafka.sasl.mechanism -}}{{- $_ := set $data "STREAMS_SASL_MECHANISM" (toString $v.kafka.sasl.mechanism) -}}{{- end -}}
{{- if $v.kafka.sasl.username -}}{{- $_ := set $data "STREAMS_SASL_USERNAME" (toString $v.kafka.sasl.username) -}}{{- end -}}
{{- $tlsDir := include "streams.tlsDir" . -}}
{{- if hasKey $keys "ca" -}}{{- $_ := set $data "STREAMS_SSL_CA_LOCATION" (printf "%s/ca.crt" $tlsDir) -}}{{- end -}}
{{- if hasKey $keys "certificate" -}}{{- $_ := set $data "STREAMS_SSL_CERTIFICATE_LOCATION" (printf "%s/tls.crt" $tlsDir) -}}{{- end -}}
{{- if hasKey $keys "key" -}}{{- $_ := set $data "STREAMS_SSL_KEY_LOCATION" (printf "%s/tls.key" $tlsDir) -}}{{- end -}}
{{- range $topic, $count := $v.streams.partitions -}}
{{- $_ := set $data (printf "STREAMS_PARTITIONS_%s" (upper $topic)) (printf "%d" (int64 $count)) -}}
{{- end -}}
{{- if not (kindIs "invalid" $v.streams.replicationFactor) -}}
{{- $_ := set $data "STREAMS_REPLICATION_FACTOR" (printf "%d" (int64 $v.streams.replicationFactor)) -}}
{{- end -}}
{{- if not (kindIs "invalid" $v.streams.eventsRetentionMs) -}}
{{- $_ := set $data "STREAMS_EVENTS_RETENTION_MS" (printf "%d" (int64 $v.streams.eventsRetentionMs)) -}}
{{- end -}}
{{- if not (kindIs "invalid" $v.streams.maxEventBytes) -}}
{{- $_ := set $data "STREAMS_MAX_EVENT_BYTES" (printf "%d" (int64 $v.streams.maxEventBytes)) -}}
{{- end -}}
{{- if $v.streams.schemaRegistryUrl -}}{{- $_ := set $data "STREAMS_SCHEMA_REGISTRY_URL" (toString $v.streams.schemaRegistryUrl) -}}{{- end -}}
{{- range $key, $value := $v.streams.kafkaConfig -}}
{{- $_ := set $data (printf "STREAMS_KAFKA_%s" (upper (replace "." "_" $key))) (toString $value) -}}
{{- end -}}
{{- range $key, $value := $v.streams.extraEnv -}}
{{- $_ := set $data $key (toString $value) -}}
{{- end -}}
{{- toYaml $data -}}
{{- end -}}

{{/* env entries for the secret settings (passwords), read from the Secret. */}}
{{- define "streams.secretEnv" -}}
{{- $keys := fromYaml (include "streams.secretKeys" .root) -}}
{{- $name := .secretName -}}
{{- if hasKey $keys "saslPassword" }}
- name: STREAMS_SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $name }}
      key: {{ get $keys "saslPassword" }}
{{- end }}
{{- if hasKey $keys "keyPassword" }}
- name: STREAMS_SSL_KEY_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $name }}
      key: {{ get $keys "keyPassword" }}
{{- end }}
{{- end -}}

{{/* Does any TLS file come from the Secret? "true" or "". */}}
{{- define "streams.hasTlsFiles" -}}
{{- $keys := fromYaml (include "streams.secretKeys" .) -}}
{{- if or (hasKey $keys "ca") (hasKey $keys "certificate") (hasKey $keys "key") -}}true{{- end -}}
{{- end -}}

{{/* The TLS volume: the Secret's TLS keys as files ca.crt, tls.crt, tls.key. */}}
{{- define "streams.tlsVolume" -}}
{{- $keys := fromYaml (include "streams.secretKeys" .root) -}}
- name: tls
  secret:
    secretName: {{ .secretName }}
    defaultMode: 0440
    items:
      {{- if hasKey $keys "ca" }}
      - key: {{ get $keys "ca" }}
        path: ca.crt
      {{- end }}
      {{- if hasKey $keys "certificate" }}
      - key: {{ get $keys "certificate" }}
        path: tls.crt
      {{- end }}
      {{- if hasKey $keys "key" }}
      - key: {{ get $keys "key" }}
        path: tls.key
      {{- end }}
{{- end -}}
