{{/* ---------------------------------------------------------------- names and labels */}}

{{- define "easel.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Kept short so "<fullname>-inference-worker" and the prefetch Job name stay valid DNS labels. */}}
{{- define "easel.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 36 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 36 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 36 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "easel.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* (dict "root" $ "component" "gateway") */}}
{{- define "easel.selectorLabels" -}}
app.kubernetes.io/name: {{ include "easel.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "easel.labels" -}}
helm.sh/chart: {{ include "easel.chart" .root }}
{{ include "easel.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: easel
{{- end -}}

{{/* Release-wide labels without a component. */}}
{{- define "easel.releaseLabels" -}}
helm.sh/chart: {{ include "easel.chart" . }}
app.kubernetes.io/name: {{ include "easel.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: easel
{{- end -}}

{{- define "easel.componentName" -}}
{{- printf "%s-%s" (include "easel.fullname" .root) .component -}}
{{- end -}}

{{- define "easel.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "easel.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* ---------------------------------------------------------------- images */}}

{{/* (dict "root" $ "image" .Values.gateway.image) -> registry/repository:tag or @digest */}}
{{- define "easel.image" -}}
{{- $root := .root -}}
{{- $repo := .image.repository -}}
{{- with $root.Values.global.imageRegistry -}}
{{- $repo = printf "%s/%s" (trimSuffix "/" .) $repo -}}
{{- end -}}
{{- if .image.digest -}}
{{- printf "%s@%s" $repo .image.digest -}}
{{- else -}}
{{- $tag := .image.tag | default $root.Values.global.imageTag | default $root.Chart.AppVersion -}}
{{- printf "%s:%s" $repo (toString $tag) -}}
{{- end -}}
{{- end -}}

{{- define "easel.migrationsImage" -}}
{{- $img := .Values.migrations.image -}}
{{- if not $img.repository -}}{{- $img = .Values.auth.image -}}{{- end -}}
{{- include "easel.image" (dict "root" . "image" $img) -}}
{{- end -}}

{{- define "easel.prefetchImage" -}}
{{- $img := .Values.models.prefetch.image -}}
{{- if not $img.repository -}}{{- $img = .Values.inferenceWorker.image -}}{{- end -}}
{{- include "easel.image" (dict "root" . "image" $img) -}}
{{- end -}}

{{/* Renders nothing without pull secrets; use as {{- with include ... }}{{ . | nindent N }}{{- end }} */}}
{{- define "easel.imagePullSecrets" -}}
{{- with .Values.global.imagePullSecrets -}}
imagePullSecrets:
{{- range . }}
  - name: {{ if kindIs "map" . }}{{ .name }}{{ else }}{{ . }}{{ end }}
{{- end }}
{{- end -}}
{{- end -}}

{{/* ---------------------------------------------------------------- security */}}

{{/* (dict "uid" 10001 "gid" 10001 "fsGroup" 10001) */}}
{{- define "easel.podSecurityContext" -}}
securityContext:
  runAsNonRoot: true
  runAsUser: {{ .uid }}
  runAsGroup: {{ .gid }}
  fsGroup: {{ .fsGroup }}
  fsGroupChangePolicy: OnRootMismatch
  seccompProfile:
    type: RuntimeDefault
{{- end -}}

{{- define "easel.containerSecurityContext" -}}
securityContext:
  runAsNonRoot: true
  runAsUser: {{ .uid }}
  runAsGroup: {{ .gid }}
  allowPrivilegeEscalation: false
  privileged: false
  readOnlyRootFilesystem: true
  capabilities:
    drop: [ALL]
  seccompProfile:
    type: RuntimeDefault
{{- end -}}

{{- define "easel.ids" -}}
{{- $s := .Values.securityContext -}}
{{- dict "uid" $s.runAsUser "gid" $s.runAsGroup "fsGroup" $s.fsGroup | toJson -}}
{{- end -}}

{{/* ---------------------------------------------------------------- scheduling */}}

{{/* (dict "root" $ "c" .Values.gateway "component" "gateway") */}}
{{- define "easel.scheduling" -}}
{{- with .c.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .c.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- if .c.affinity }}
affinity:
  {{- toYaml .c.affinity | nindent 2 }}
{{- else if .component }}
{{- /* Spread replicas over nodes when nothing else is asked for. */}}
affinity:
  podAntiAffinity:
    preferredDuringSchedulingIgnoredDuringExecution:
      - weight: 100
        podAffinityTerm:
          topologyKey: kubernetes.io/hostname
          labelSelector:
            matchLabels:
              {{- include "easel.selectorLabels" . | nindent 14 }}
{{- end }}
{{- with .c.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* ---------------------------------------------------------------- secrets and dependencies */}}

{{- define "easel.databaseSecret" -}}
{{- if or .Values.inCluster.postgres.enabled .Values.database.url -}}
{{- printf "%s-database" (include "easel.fullname" .) -}}
{{- else -}}
{{- .Values.database.existingSecret -}}
{{- end -}}
{{- end -}}

{{- define "easel.databaseSecretKey" -}}
{{- if or .Values.inCluster.postgres.enabled .Values.database.url -}}url{{- else -}}{{ .Values.database.existingSecretKey }}{{- end -}}
{{- end -}}

{{- define "easel.databaseUrl" -}}
{{- if .Values.inCluster.postgres.enabled -}}
{{- $pg := .Values.inCluster.postgres -}}
{{- printf "postgresql://%s:%s@%s-postgres:5432/%s" $pg.username (urlquery $pg.password) (include "easel.fullname" .) $pg.database -}}
{{- else -}}
{{- .Values.database.url -}}
{{- end -}}
{{- end -}}

{{- define "easel.natsSecret" -}}
{{- if or .Values.inCluster.nats.enabled .Values.nats.url -}}
{{- printf "%s-nats" (include "easel.fullname" .) -}}
{{- else -}}
{{- .Values.nats.existingSecret -}}
{{- end -}}
{{- end -}}

{{- define "easel.natsSecretKey" -}}
{{- if or .Values.inCluster.nats.enabled .Values.nats.url -}}url{{- else -}}{{ .Values.nats.existingSecretKey }}{{- end -}}
{{- end -}}

{{- define "easel.natsUrl" -}}
{{- if .Values.inCluster.nats.enabled -}}
{{- printf "nats://%s-nats:4222" (include "easel.fullname" .) -}}
{{- else -}}
{{- .Values.nats.url -}}
{{- end -}}
{{- end -}}

{{- define "easel.natsMonitoringEndpoint" -}}
{{- if .Values.inCluster.nats.enabled -}}
{{- printf "%s-nats.%s.svc:8222" (include "easel.fullname" .) .Release.Namespace -}}
{{- else -}}
{{- .Values.nats.monitoringEndpoint -}}
{{- end -}}
{{- end -}}

{{- define "easel.s3Secret" -}}
{{- if or .Values.inCluster.minio.enabled .Values.s3.accessKey -}}
{{- printf "%s-s3" (include "easel.fullname" .) -}}
{{- else -}}
{{- .Values.s3.existingSecret -}}
{{- end -}}
{{- end -}}

{{- define "easel.s3AccessKeyKey" -}}
{{- if or .Values.inCluster.minio.enabled .Values.s3.accessKey -}}accessKey{{- else -}}{{ .Values.s3.accessKeyKey }}{{- end -}}
{{- end -}}

{{- define "easel.s3SecretKeyKey" -}}
{{- if or .Values.inCluster.minio.enabled .Values.s3.accessKey -}}secretKey{{- else -}}{{ .Values.s3.secretKeyKey }}{{- end -}}
{{- end -}}

{{- define "easel.s3Endpoint" -}}
{{- if .Values.inCluster.minio.enabled -}}
{{- printf "%s-minio:9000" (include "easel.fullname" .) -}}
{{- else -}}
{{- .Values.s3.endpoint -}}
{{- end -}}
{{- end -}}

{{/* gRPC targets of the services, by Service name in the release namespace. */}}
{{- define "easel.authTarget" -}}
{{- printf "%s-auth:%v" (include "easel.fullname" .) .Values.auth.grpcPort -}}
{{- end -}}
{{- define "easel.galleryTarget" -}}
{{- printf "%s-gallery:%v" (include "easel.fullname" .) .Values.gallery.grpcPort -}}
{{- end -}}
{{- define "easel.inferenceTarget" -}}
{{- printf "%s-inference-api:%v" (include "easel.fullname" .) .Values.inferenceApi.grpcPort -}}
{{- end -}}

{{/* ---------------------------------------------------------------- environment */}}

{{/*
Environment of one container, rendered once per name (a name given twice breaks server-side apply):
(dict "root" $ "c" <component values> "env" <dict of the component's own settings>
      "secrets" <list of EnvVar with valueFrom>). The component's `env` map wins over the chart's
settings; `global.extraEnv` and the component's `extraEnv` come last.
*/}}
{{- define "easel.env" -}}
{{- $root := .root -}}
{{- $g := $root.Values.global -}}
{{- $base := dict
    "EASEL_LOG_LEVEL" $g.logLevel
    "EASEL_RPC_TIMEOUT_S" (toString $g.rpcTimeoutSeconds)
    "EASEL_SHUTDOWN_GRACE_S" (toString .c.shutdownGraceSeconds)
    "HOME" "/tmp"
    "PYTHONUNBUFFERED" "1"
    "PYTHONDONTWRITEBYTECODE" "1"
-}}
{{- with $g.otlpEndpoint }}{{- $_ := set $base "OTEL_EXPORTER_OTLP_ENDPOINT" . -}}{{- end -}}
{{- range $k, $v := (.env | default dict) }}{{- $_ := set $base $k (toString $v) -}}{{- end -}}
{{- range $k, $v := (.c.env | default dict) }}{{- $_ := set $base $k (toString $v) -}}{{- end -}}
env:
{{- range $k := keys $base | sortAlpha }}
  - name: {{ $k }}
    value: {{ get $base $k | quote }}
{{- end }}
{{- with .secrets }}
{{- toYaml . | nindent 2 }}
{{- end }}
{{- with $g.extraEnv }}
{{- toYaml . | nindent 2 }}
{{- end }}
{{- with .c.extraEnv }}
{{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{- define "easel.databaseEnv" -}}
- name: EASEL_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "easel.databaseSecret" . }}
      key: {{ include "easel.databaseSecretKey" . }}
{{- end -}}

{{- define "easel.natsEnv" -}}
- name: EASEL_NATS_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "easel.natsSecret" . }}
      key: {{ include "easel.natsSecretKey" . }}
{{- end -}}

{{- define "easel.s3Env" -}}
- name: EASEL_S3_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "easel.s3Secret" . }}
      key: {{ include "easel.s3AccessKeyKey" . }}
- name: EASEL_S3_SECRET_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "easel.s3Secret" . }}
      key: {{ include "easel.s3SecretKeyKey" . }}
{{- end -}}

{{/* Annotations that roll pods when the chart-managed Secrets change. */}}
{{- define "easel.podAnnotations" -}}
{{- $root := .root -}}
checksum/secrets: {{ include (print $root.Template.BasePath "/secrets.yaml") $root | sha256sum }}
{{- with $root.Values.global.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- with .c.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "easel.podLabels" -}}
{{ include "easel.labels" . }}
{{- with .root.Values.global.podLabels }}
{{ toYaml . }}
{{- end }}
{{- with .c.podLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The /tmp emptyDir every pod gets (the root filesystem is read-only). */}}
{{- define "easel.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .size | default "512Mi" }}
{{- end -}}

{{/* Init container that waits for each model's manifest on the volume: (dict "root" $ "image" <ref>). */}}
{{- define "easel.waitForModels" -}}
{{- $root := .root -}}
- name: wait-for-models
  image: {{ .image }}
  imagePullPolicy: {{ $root.Values.global.imagePullPolicy }}
  command: ["/bin/sh", "-c"]
  args:
    - |
      set -eu
      for m in {{ join " " $root.Values.inferenceWorker.models }}; do
        n=0
        until [ -f "{{ $root.Values.models.mountPath }}/$m/easel-model.json" ]; do
          if [ $((n % 12)) -eq 0 ]; then echo "waiting for model $m on {{ $root.Values.models.mountPath }} (the model-prefetch Job fills it)"; fi
          n=$((n + 1)); sleep 5
        done
        echo "model $m is on the volume"
      done
  resources:
    requests: {cpu: 10m, memory: 16Mi}
    limits: {cpu: 100m, memory: 64Mi}
  {{- include "easel.containerSecurityContext" (include "easel.ids" $root | fromJson) | nindent 2 }}
  volumeMounts:
    - name: models
      mountPath: {{ $root.Values.models.mountPath }}
      readOnly: true
{{- end -}}

{{- define "easel.modelsClaim" -}}
{{- default (printf "%s-models" (include "easel.fullname" .)) .Values.models.persistence.existingClaim -}}
{{- end -}}

{{- define "easel.modelsVolume" -}}
- name: models
  persistentVolumeClaim:
    claimName: {{ include "easel.modelsClaim" . }}
    readOnly: true
{{- end -}}
