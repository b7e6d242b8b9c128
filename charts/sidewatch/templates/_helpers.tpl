{{/* Common labels. */}}
{{- define "sidewatch.labels" -}}
app.kubernetes.io/name: sidewatch
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* image renders repository:tag for one component's image values. */}}
{{- define "sidewatch.image" -}}
{{- $repo := .image.repository -}}
{{- if not (contains "/" $repo) -}}{{- $repo = printf "%s/%s" .root.Values.imageRegistry $repo -}}{{- end -}}
{{- printf "%s:%s" $repo (default .root.Chart.AppVersion .image.tag) -}}
{{- end -}}
