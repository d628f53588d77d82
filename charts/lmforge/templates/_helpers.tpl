{{- define "lmforge.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}{{ .Release.Name | trunc 63 | trimSuffix "-" }}{{- else -}}{{ printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}{{- end -}}
{{- end -}}

{{- define "lmforge.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: operator
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "lmforge.selector" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "lmforge.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}{{ default (include "lmforge.fullname" .) .Values.serviceAccount.name }}{{- else -}}{{ default "default" .Values.serviceAccount.name }}{{- end -}}
{{- end -}}

{{/* Cluster-wide RBAC (ClusterRole, all namespaces) only when opted in: rbac.clusterWide, or the
old rbac.namespaced=false set explicitly. */}}
{{- define "lmforge.clusterWide" -}}
{{- if or .Values.rbac.clusterWide (and (hasKey .Values.rbac "namespaced") (not .Values.rbac.namespaced)) -}}true{{- end -}}
{{- end -}}

{{/* The namespaces the operator watches and gets a Role in: watchNamespaces, else its own. */}}
{{- define "lmforge.namespaces" -}}
{{- if .Values.watchNamespaces -}}{{ toJson .Values.watchNamespaces }}{{- else -}}{{ toJson (list .Release.Namespace) }}{{- end -}}
{{- end -}}

{{/* An allow-list split for CEL: {"exact": [...], "prefixes": [...]} (an entry ending in * is a
prefix), plus the always-allowed values given as .always. */}}
{{- define "lmforge.patterns" -}}
{{- $exact := list -}}{{- $prefixes := list -}}
{{- range .always -}}{{- if . -}}{{- $exact = append $exact . -}}{{- end -}}{{- end -}}
{{- range .patterns -}}
{{- if hasSuffix "*" . -}}{{- $prefixes = append $prefixes (trimSuffix "*" .) -}}{{- else -}}{{- $exact = append $exact . -}}{{- end -}}
{{- end -}}
{{- toJson (dict "exact" $exact "prefixes" $prefixes) -}}
{{- end -}}

{{/* The rules the operator needs - and nothing else. Shared by the ClusterRole and the Roles. */}}
{{- define "lmforge.rules" -}}
# Watch LMForge resources (kopf indices and events).
- apiGroups: ["lmforge.io"]
  resources: ["datasets", "pretrainjobs", "alignmentjobs", "evalsuites", "modelreleases"]
  verbs: {{ if .Values.store.cleanupOnDelete }}["get", "list", "watch", "patch"]{{ else }}["get", "list", "watch"]{{ end }}
# Write their status (merge patch on the status subresource).
- apiGroups: ["lmforge.io"]
  resources: ["datasets/status", "pretrainjobs/status", "alignmentjobs/status", "evalsuites/status", "modelreleases/status"]
  verbs: ["patch"]
# Stage Jobs and serving Deployments: watched, server-side applied (patch + create), superseded ones deleted.
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# Spec ConfigMaps, headless/serving Services: applied and deleted; read by name once before the
# first apply, so that an object of the same name someone else made is never adopted.
- apiGroups: [""]
  resources: ["configmaps", "services"]
  verbs: ["get", "create", "patch", "delete"]
# A release with serving.gateway: its HTTPRoute (canary weights), applied; removed with the release
# or when serving.gateway is removed.
- apiGroups: ["gateway.networking.k8s.io"]
  resources: ["httproutes"]
  verbs: ["get", "create", "patch", "delete"]
# Failed pods' termination messages explain a failure.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list"]
# A stage waits (condition WaitingForSecret) until the Secrets its pods mount exist: read one by name.
# Never list or watch: the operator must not be able to enumerate Secrets.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- if .Values.networkPolicy.enabled }}
# One NetworkPolicy per stage run (egress to DNS, the store and the run's own pods).
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["get", "create", "patch", "delete"]
{{- end }}
{{- if .Values.volcano.enabled }}
- apiGroups: ["scheduling.volcano.sh"]
  resources: ["podgroups"]
  verbs: ["get", "create", "patch", "delete"]
{{- end }}
{{- end -}}

{{/* "true" when the replicas elect a leader: asked for, or needed because there are several. */}}
{{- define "lmforge.leaderElection" -}}
{{- if or .Values.leaderElection.enabled (gt (int .Values.replicaCount) 1) }}true{{ end }}
{{- end -}}
