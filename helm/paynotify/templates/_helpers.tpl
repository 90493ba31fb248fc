{{/* Chart name. */}}
{{- define "paynotify.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release-qualified name, at most 55 characters so that "-gateway" still fits in 63. */}}
{{- define "paynotify.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 55 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 55 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 55 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "paynotify.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels common to every object. */}}
{{- define "paynotify.labels" -}}
helm.sh/chart: {{ include "paynotify.chart" . }}
app.kubernetes.io/name: {{ include "paynotify.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Selector labels of one component: (dict "root" $ "c" $component). */}}
{{- define "paynotify.selectorLabels" -}}
app.kubernetes.io/name: {{ include "paynotify.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .c.component }}
{{- end }}

{{/*
The Deployments to render, as JSON {"items": [...]}; each item has name (object name),
component (label), roles (PAYNOTIFY_ROLES), api/worker/gateway (booleans) and values (the
component's values block).
*/}}
{{- define "paynotify.components" -}}
{{- $full := include "paynotify.fullname" . }}
{{- $items := list }}
{{- if eq .Values.mode "combined" }}
{{- $roles := list }}
{{- range splitList "," .Values.combined.roles }}
{{- $r := trim . }}
{{- if eq $r "all" }}
{{- $roles = concat $roles (list "api" "worker" "gateway") }}
{{- else if has $r (list "api" "worker" "gateway") }}
{{- $roles = append $roles $r }}
{{- else if $r }}
{{- fail (printf "combined.roles: unknown role %q; use api, worker, gateway or all" $r) }}
{{- end }}
{{- end }}
{{- $roles = uniq $roles }}
{{- if not $roles }}
{{- fail "combined.roles: give at least one of api, worker, gateway" }}
{{- end }}
{{- $items = append $items (dict "name" $full "component" "node" "roles" (join "," $roles) "api" (has "api" $roles) "worker" (has "worker" $roles) "gateway" (has "gateway" $roles) "values" .Values.combined) }}
{{- else if eq .Values.mode "split" }}
{{- range $role := list "api" "worker" "gateway" }}
{{- $v := index $.Values $role }}
{{- if $v.enabled }}
{{- $items = append $items (dict "name" (printf "%s-%s" $full $role) "component" $role "roles" $role "api" (eq $role "api") "worker" (eq $role "worker") "gateway" (eq $role "gateway") "values" $v) }}
{{- end }}
{{- end }}
{{- if not $items }}
{{- fail "split mode: enable at least one of api, worker, gateway" }}
{{- end }}
{{- else }}
{{- fail (printf "mode: %q is neither combined nor split" .Values.mode) }}
{{- end }}
{{- dict "items" $items | toJson }}
{{- end }}

{{/* True (non-empty) when some rendered Deployment runs this role: (dict "root" $ "role" "api"). */}}
{{- define "paynotify.anyRole" -}}
{{- range (include "paynotify.components" .root | fromJson).items }}
{{- if index . $.role }}true{{ end }}
{{- end }}
{{- end }}

{{- define "paynotify.secretName" -}}
{{- .Values.secrets.existingSecret | default (include "paynotify.fullname" .) }}
{{- end }}

{{- define "paynotify.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- .Values.serviceAccount.name | default (include "paynotify.fullname" .) }}
{{- else }}
{{- .Values.serviceAccount.name | default "default" }}
{{- end }}
{{- end }}

{{- define "paynotify.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion | toString) }}
{{- end }}

{{/* Pod termination grace: above the node's own shutdown grace and delay. */}}
{{- define "paynotify.terminationGrace" -}}
{{- if .Values.terminationGracePeriodSeconds }}
{{- .Values.terminationGracePeriodSeconds | int }}
{{- else }}
{{- add (.Values.config.shutdownGraceSeconds | int) (.Values.config.shutdownDelaySeconds | int) 10 }}
{{- end }}
{{- end }}
