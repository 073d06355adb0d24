{{/*
Names, labels and image references shared by the templates.
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "vlm.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The prefix of every object name: fullnameOverride, else <release>-<name>, or just <release>
when the release name already contains the chart name. 63 characters at most (a DNS label).
*/}}
{{- define "vlm.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* chart-version, for the helm.sh/chart label. */}}
{{- define "vlm.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels that select the operator pods; never change them (Deployment selectors are immutable). */}}
{{- define "vlm.selectorLabels" -}}
app.kubernetes.io/name: {{ include "vlm.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/* Labels of every object the chart creates. */}}
{{- define "vlm.labels" -}}
helm.sh/chart: {{ include "vlm.chart" . }}
{{ include "vlm.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: vlm-trainer-operator
{{- end }}

{{/* The operator's ServiceAccount name. */}}
{{- define "vlm.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "vlm.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Whether leader election is on (several replicas): "true" or "". */}}
{{- define "vlm.leaderElection" -}}
{{- if gt (int .Values.replicaCount) 1 }}true{{ end }}
{{- end }}

{{/* The leader-election Lease's name (in the release namespace). */}}
{{- define "vlm.leaseName" -}}
{{- default (include "vlm.fullname" .) .Values.leaderElection.leaseName }}
{{- end }}

{{/*
An image reference from {repository, tag, digest}: repository@digest when a digest is set,
else repository:tag with the chart's appVersion as the default tag.
Usage: include "vlm.image" (dict "image" .Values.image "root" .)
*/}}
{{- define "vlm.image" -}}
{{- if .image.digest }}
{{- printf "%s@%s" .image.repository .image.digest }}
{{- else }}
{{- printf "%s:%s" .image.repository (default .root.Chart.AppVersion .image.tag) }}
{{- end }}
{{- end }}

{{/* For NOTES: the claim a pvc:// location needs, e.g. ' -> PersistentVolumeClaim "x"'. */}}
{{- define "vlm.claimNote" -}}
{{- if hasPrefix "pvc://" . }}
{{- printf " -> PersistentVolumeClaim %q" (first (splitList "/" (trimPrefix "pvc://" .))) }}
{{- end }}
{{- end }}
