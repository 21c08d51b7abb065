{{/* Names: <release>-umeflow unless the release name already contains the chart name; 63 chars max. */}}
{{- define "umeflow.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "umeflow.fullname" -}}
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

{{/* A component's name: <fullname>-<component>, 63 chars max. Call with (dict "root" $ "component" "mlflow"). */}}
{{- define "umeflow.componentName" -}}
{{- printf "%s-%s" (include "umeflow.fullname" .root | trunc (int (sub 62 (len .component)))) .component | trimSuffix "-" }}
{{- end }}

{{- define "umeflow.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels; call with (dict "root" $ "component" "mlflow"). */}}
{{- define "umeflow.selectorLabels" -}}
app.kubernetes.io/name: {{ include "umeflow.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "umeflow.labels" -}}
helm.sh/chart: {{ include "umeflow.chart" .root }}
{{ include "umeflow.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: umeflow
{{- end }}

{{/*
The image reference: repository@digest when a digest is set, else repository:tag. A floating tag is refused: the
same release must run the same code next month (the pipeline's images are pinned the same way).
*/}}
{{- define "umeflow.image" -}}
{{- $img := .Values.image }}
{{- if $img.digest }}
{{- if not (regexMatch "^sha256:[0-9a-f]{64}$" $img.digest) }}
{{- fail (printf "image.digest %q is not of the form sha256:<64 hex>" $img.digest) }}
{{- end }}
{{- printf "%s@%s" $img.repository $img.digest }}
{{- else }}
{{- $tag := toString $img.tag }}
{{- if or (not $tag) (has $tag (list "latest" "main" "master" "dev" "edge" "nightly" "stable")) }}
{{- fail (printf "image.tag %q is not pinned: set image.digest (sha256:...) or an exact version tag" $tag) }}
{{- end }}
{{- printf "%s:%s" $img.repository $tag }}
{{- end }}
{{- end }}

{{/* The MLflow tracking URI inside the cluster. */}}
{{- define "umeflow.mlflowUri" -}}
{{- printf "http://%s.%s.svc:%d" (include "umeflow.componentName" (dict "root" . "component" "mlflow")) .Release.Namespace (int .Values.mlflow.service.port) }}
{{- end }}

{{/* Where the bootstrap Job reads the compiled pipeline: the image's copy, or the mounted ConfigMap's. */}}
{{- define "umeflow.pipelineFile" -}}
{{- if .Values.bootstrap.pipeline.configMap -}}
/pipelines/train_and_promote.yaml
{{- else -}}
{{- .Values.bootstrap.pipeline.file }}
{{- end }}
{{- end }}

{{/* S3 endpoint, region and credentials (secretKeyRef only) as container env. */}}
{{- define "umeflow.s3Env" -}}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ required "s3.credentialsSecret.name is required for an s3:// artifact store" .Values.s3.credentialsSecret.name }}
      key: {{ .Values.s3.credentialsSecret.accessKeyIdKey }}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .Values.s3.credentialsSecret.name }}
      key: {{ .Values.s3.credentialsSecret.secretAccessKeyKey }}
- name: AWS_DEFAULT_REGION
  value: {{ .Values.s3.region | quote }}
{{- with .Values.s3.endpointUrl }}
- name: MLFLOW_S3_ENDPOINT_URL
  value: {{ . | quote }}
- name: AWS_ENDPOINT_URL_S3
  value: {{ . | quote }}
{{- end }}
{{- end }}

{{/*
Refuse credentials written into a URI value: they would end up in the release's stored values and in the pod spec.
Call with (list "<key>" <value> "<where the secret goes instead>").
*/}}
{{- define "umeflow.refuseInlineCredentials" -}}
{{- $key := index . 0 }}
{{- $value := toString (index . 1) }}
{{- if regexMatch "^[A-Za-z][A-Za-z0-9+.-]*://[^/@:]+:[^/@]+@" $value }}
{{- fail (printf "%s contains a password: reference a Secret instead (%s)" $key (index . 2)) }}
{{- end }}
{{- end }}

{{/* One bootstrap step's container; call with (dict "root" $ "container" (dict "name" .. "args" ..)). */}}
{{- define "umeflow.bootstrapContainer" -}}
{{- $root := .root -}}
- name: {{ .container.name }}
  image: {{ include "umeflow.image" $root }}
  imagePullPolicy: {{ $root.Values.image.pullPolicy }}
  securityContext:
    {{- toYaml $root.Values.containerSecurityContext | nindent 4 }}
  args:
    {{- range .container.args }}
    - {{ . | quote }}
    {{- end }}
  env:
    - name: KFP_HOST
      value: {{ $root.Values.bootstrap.kfp.host | quote }}
    - name: KF_PIPELINES_SA_TOKEN_PATH
      value: /var/run/secrets/kubeflow/pipelines/token
    - name: MLFLOW_TRACKING_URI
      value: {{ include "umeflow.mlflowUri" $root | quote }}
    {{- with $root.Values.bootstrap.mlflowCredentialsSecret }}
    {{- if .name }}
    - name: MLFLOW_TRACKING_USERNAME
      valueFrom:
        secretKeyRef:
          name: {{ .name }}
          key: {{ .usernameKey }}
    - name: MLFLOW_TRACKING_PASSWORD
      valueFrom:
        secretKeyRef:
          name: {{ .name }}
          key: {{ .passwordKey }}
    {{- end }}
    {{- end }}
  resources:
    {{- toYaml $root.Values.bootstrap.resources | nindent 4 }}
  volumeMounts:
    - name: tmp
      mountPath: /tmp
    - name: home
      mountPath: /home/umeflow
    - name: kfp-token
      mountPath: /var/run/secrets/kubeflow/pipelines
      readOnly: true
    {{- if $root.Values.bootstrap.pipeline.configMap }}
    - name: pipeline
      mountPath: /pipelines
      readOnly: true
    {{- end }}
{{- end }}
