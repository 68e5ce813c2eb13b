{{/* Common labels. */}}
{{- define "trustgate.labels" -}}
app.kubernetes.io/part-of: trustgate
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{- define "trustgate.gatewayName" -}}{{ printf "%s-gateway" .Release.Name | trunc 63 }}{{- end }}
{{- define "trustgate.workerName" -}}{{ printf "%s-worker" .Release.Name | trunc 63 }}{{- end }}

{{- define "trustgate.gatewaySelector" -}}
app.kubernetes.io/name: trustgate-gateway
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "trustgate.workerSelector" -}}
app.kubernetes.io/name: trustgate-worker
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Hardened container security context. */}}
{{- define "trustgate.containerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "trustgate.podSecurity" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "trustgate.image" -}}{{ printf "%s:%s" .Values.image.repository .Values.image.tag }}{{- end }}

{{- define "trustgate.natsName" -}}{{ printf "%s-nats" .Release.Name | trunc 63 }}{{- end }}
{{- define "trustgate.adminSecret" -}}{{ default (printf "%s-admin" .Release.Name | trunc 63) .Values.admin.existingSecret }}{{- end }}

{{- define "trustgate.natsSelector" -}}
app.kubernetes.io/name: trustgate-nats
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Whether the chart runs its own NATS cluster. */}}
{{- define "trustgate.bundledNats" -}}
{{- if and (eq .Values.cluster.backend "nats") .Values.nats.enabled (not .Values.cluster.servers) }}true{{ end }}
{{- end }}

{{/* The NATS URLs the gateway connects to. */}}
{{- define "trustgate.natsServers" -}}
{{- if .Values.cluster.servers }}{{ toJson .Values.cluster.servers }}{{ else }}{{ list (printf "nats://%s.%s.svc:4222" (include "trustgate.natsName" .) .Release.Namespace) | toJson }}{{ end }}
{{- end }}
