-- replicator demo schema: smart_citizen, the citizen portal of the seed
-- (seed/data-integration-strategy.md). Source of truth for what citizens submit
-- (accounts, applications, documents, feedback, behaviour); receives the warehouse's
-- scheme catalog, eligibility hints, forecasts, decisions, alerts and profile summaries,
-- masked on the way.
--
-- Usage (idempotent: run it again at any time):
--   psql -d smart_citizen -f sql/demo/smart_citizen.sql
-- `replicator demo` runs it through psycopg, leaving out the psql meta-commands (\set).
--
-- Keys: tables written on both databases (service_applications, consents) use UUIDs,
-- because sequences are not replicated. Tables the warehouse fills carry no foreign keys
-- to portal tables: the daemon applies in `session_replication_role = replica`, and the
-- two pipelines do not order against each other.
-- Columns filled with masked values say so in their comments. None of them is part of a
-- unique index: the daemon refuses a lossy mask on a key or unique column.

\set ON_ERROR_STOP on

CREATE SCHEMA IF NOT EXISTS ops;
COMMENT ON SCHEMA ops IS 'Operations: replication heartbeats that measure sync latency';

-- --- the portal's own data ------------------------------------------------------------------

CREATE TABLE IF NOT EXISTS public.citizens (
    citizen_id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    golden_record_id    uuid,                   -- set once the warehouse resolved the person
    full_name           text NOT NULL,
    gender              text CHECK (gender IN ('F', 'M', 'X')),
    date_of_birth       date,
    mobile              text NOT NULL,          -- login; the citizen's own, not masked here
    email               text,
    district_id         int NOT NULL,
    address             jsonb,
    preferred_language  text NOT NULL DEFAULT 'hi',
    registered_at       timestamptz NOT NULL DEFAULT now(),
    last_login_at       timestamptz,
    updated_at          timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX IF NOT EXISTS citizens_mobile ON public.citizens (mobile);
CREATE INDEX IF NOT EXISTS citizens_golden ON public.citizens (golden_record_id);
COMMENT ON TABLE public.citizens IS
    'Citizen accounts and profiles; profile updates flow to the warehouse (portal.citizens)';

CREATE TABLE IF NOT EXISTS public.documents (
    document_id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    citizen_id           uuid NOT NULL REFERENCES public.citizens (citizen_id),
    application_id       uuid,
    doc_type             text NOT NULL CHECK (doc_type IN ('income_certificate',
                             'caste_certificate', 'bank_passbook', 'ration_card', 'photo',
                             'disability_certificate', 'domicile_certificate')),
    file_name            text NOT NULL,
    mime_type            text NOT NULL,
    size_bytes           bigint NOT NULL,
    sha256               text NOT NULL,
    storage_url          text NOT NULL,         -- object storage; the file never replicates
    verification_status  text NOT NULL DEFAULT 'pending'
        CHECK (verification_status IN ('pending', 'verified', 'rejected')),
    uploaded_at          timestamptz NOT NULL DEFAULT now(),
    verified_at          timestamptz,
    updated_at           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS documents_citizen ON public.documents (citizen_id);
CREATE INDEX IF NOT EXISTS documents_application ON public.documents (application_id);
COMMENT ON TABLE public.documents IS 'Uploaded documents (metadata); flows to the warehouse';

CREATE TABLE IF NOT EXISTS public.payments (
    payment_id      uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    application_id  uuid NOT NULL,
    citizen_id      uuid NOT NULL REFERENCES public.citizens (citizen_id),
    amount          numeric(12, 2) NOT NULL,
    method          text NOT NULL CHECK (method IN ('dbt', 'upi', 'neft', 'cash')),
    status          text NOT NULL
        CHECK (status IN ('initiated', 'completed', 'failed', 'reversed')),
    bank_reference  text,
    initiated_at    timestamptz NOT NULL DEFAULT now(),
    completed_at    timestamptz
);
CREATE INDEX IF NOT EXISTS payments_citizen ON public.payments (citizen_id);
COMMENT ON TABLE public.payments IS
    'Benefit payment transactions; portal only (not in the seed''s flows)';

CREATE TABLE IF NOT EXISTS public.feedback (
    feedback_id   uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    citizen_id    uuid,                          -- NULL: anonymous
    category      text NOT NULL CHECK (category IN ('complaint', 'suggestion', 'praise', 'query')),
    subject       text NOT NULL,
    message       text NOT NULL,
    rating        smallint CHECK (rating BETWEEN 1 AND 5),
    scheme_code   text,
    channel       text NOT NULL DEFAULT 'web',
    status        text NOT NULL DEFAULT 'open'
        CHECK (status IN ('open', 'in_progress', 'resolved')),
    submitted_at  timestamptz NOT NULL DEFAULT now(),
    resolved_at   timestamptz
);
COMMENT ON TABLE public.feedback IS 'Feedback and complaints; flows to the warehouse';

CREATE TABLE IF NOT EXISTS public.user_events (
    -- one-way: an identity is safe
    event_id     bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    session_id   uuid NOT NULL,
    citizen_id   uuid,
    event_type   text NOT NULL CHECK (event_type IN ('login', 'page_view', 'search',
                     'scheme_view', 'apply_start', 'apply_submit', 'doc_upload', 'logout')),
    page         text NOT NULL,
    scheme_code  text,
    device       text NOT NULL,
    district_id  int,
    properties   jsonb,
    occurred_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS user_events_time ON public.user_events (occurred_at);
COMMENT ON TABLE public.user_events IS
    'Behaviour analytics (clicks, searches, views); flows to the warehouse';

-- --- written on both sides ---------------------------------------------------------------------

CREATE TABLE IF NOT EXISTS public.service_applications (
    application_id    uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    citizen_id        uuid NOT NULL,
    golden_record_id  uuid,
    scheme_code       text NOT NULL,
    status            text NOT NULL DEFAULT 'submitted' CHECK (status IN ('submitted',
                          'under_review', 'documents_required', 'approved', 'rejected',
                          'withdrawn')),
    form_data         jsonb,
    submitted_at      timestamptz NOT NULL DEFAULT now(),
    decided_at        timestamptz,
    decision_reason   text,
    approved_amount   numeric(12, 2),
    district_id       int NOT NULL,
    channel           text NOT NULL DEFAULT 'web',
    updated_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS service_applications_citizen ON public.service_applications (citizen_id);
CREATE INDEX IF NOT EXISTS service_applications_waiting
    ON public.service_applications (submitted_at) WHERE status = 'documents_required';
COMMENT ON TABLE public.service_applications IS
    'Applications submitted here; decisions arrive from the warehouse (decision.applications). '
    'Two-way: newer updated_at wins';

CREATE TABLE IF NOT EXISTS public.consents (
    consent_id        uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    citizen_id        uuid NOT NULL,
    golden_record_id  uuid,
    purpose           text NOT NULL
        CHECK (purpose IN ('scheme_intimation', 'data_sharing', 'sms_alerts', 'analytics')),
    channel           text NOT NULL,
    status            text NOT NULL CHECK (status IN ('granted', 'revoked')),
    mobile            text,                     -- from the warehouse, masked partial:4
    granted_at        timestamptz,
    revoked_at        timestamptz,
    updated_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS consents_citizen ON public.consents (citizen_id, purpose);
COMMENT ON TABLE public.consents IS
    'Consents, granted or revoked here or in the warehouse; two-way, newer updated_at wins';
COMMENT ON COLUMN public.consents.mobile IS
    'masked by the warehouse (partial:4); never replicated back';

-- --- filled by the warehouse (read-only here) ----------------------------------------------------

CREATE TABLE IF NOT EXISTS public.schemes (
    code                 text PRIMARY KEY,       -- the warehouse's scheme_code
    name                 text NOT NULL,
    name_hi              text,
    department           text NOT NULL,
    category             text NOT NULL,
    description          text,
    benefit_type         text NOT NULL,
    benefit_amount       numeric(12, 2),
    eligibility_summary  jsonb NOT NULL DEFAULT '{}',
    target_districts     int[],
    is_active            boolean NOT NULL DEFAULT true,
    valid_from           date NOT NULL,
    valid_to             date,
    version              int NOT NULL DEFAULT 1,
    updated_at           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS schemes_department ON public.schemes (department) WHERE is_active;
COMMENT ON TABLE public.schemes IS 'Scheme catalog (read-only copy of eligibility.scheme_master)';

CREATE TABLE IF NOT EXISTS public.eligibility_hints (
    snapshot_id        uuid PRIMARY KEY,
    golden_record_id   uuid NOT NULL,
    scheme_code        text NOT NULL,
    eligibility_score  numeric(5, 2) NOT NULL,
    status             text NOT NULL,
    income_band        text,                     -- masked: CONFIDENTIAL
    district_id        int NOT NULL,
    reasons            jsonb,
    model_version      text,
    evaluated_at       timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS eligibility_hints_profile ON public.eligibility_hints (golden_record_id);
COMMENT ON TABLE public.eligibility_hints IS
    '"You may be eligible for ...": eligibility snapshots from the warehouse';
COMMENT ON COLUMN public.eligibility_hints.income_band IS
    'masked by the warehouse: redact:CONFIDENTIAL';

CREATE TABLE IF NOT EXISTS public.benefit_forecasts (
    forecast_id       uuid PRIMARY KEY,
    golden_record_id  uuid NOT NULL,
    scheme_code       text NOT NULL,
    forecast_period   date NOT NULL,
    predicted_amount  numeric(12, 2) NOT NULL,
    probability       numeric(4, 3) NOT NULL,
    lower_bound       numeric(12, 2),
    upper_bound       numeric(12, 2),
    model_version     text NOT NULL,
    created_at        timestamptz NOT NULL,
    updated_at        timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS benefit_forecasts_profile
    ON public.benefit_forecasts (golden_record_id, forecast_period);
COMMENT ON TABLE public.benefit_forecasts IS 'Benefit forecasts from the warehouse';

CREATE TABLE IF NOT EXISTS public.notifications (
    notification_id   uuid PRIMARY KEY,          -- the warehouse's alert_id
    golden_record_id  uuid NOT NULL,
    campaign_id       uuid,
    scheme_code       text,
    kind              text NOT NULL,
    title             text NOT NULL,
    body              text NOT NULL,
    mobile            text,                      -- masked: partial:4
    email             text,                      -- masked: email
    priority          smallint NOT NULL,
    channel           text NOT NULL,
    created_at        timestamptz NOT NULL,
    expires_at        timestamptz,
    read_at           timestamptz                -- portal only: the warehouse never sets it
);
CREATE INDEX IF NOT EXISTS notifications_unread
    ON public.notifications (golden_record_id, created_at) WHERE read_at IS NULL;
COMMENT ON TABLE public.notifications IS 'Portal notifications: the warehouse''s ML-driven alerts';
COMMENT ON COLUMN public.notifications.mobile IS 'masked by the warehouse: partial:4';
COMMENT ON COLUMN public.notifications.email IS 'masked by the warehouse: email';

CREATE TABLE IF NOT EXISTS public.profile_summary (
    profile_id             uuid PRIMARY KEY,     -- the warehouse's golden record id
    full_name              text NOT NULL,
    gender                 text,
    date_of_birth          date,
    district_id            int NOT NULL,
    aadhaar_number         text,                 -- masked: ***MASKED***
    jan_aadhaar            text,                 -- masked: ****-****-1234
    mobile                 text,                 -- masked: ******5678
    email                  text,                 -- masked: u***@example.com
    income_band            text,                 -- masked: CONFIDENTIAL
    vulnerability_level    text,
    eligibility_score      numeric(5, 2),
    profile_confidence     numeric(4, 3),
    eligible_scheme_count  int NOT NULL DEFAULT 0,
    model_version          text,
    updated_at             timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS profile_summary_district ON public.profile_summary (district_id);
COMMENT ON TABLE public.profile_summary IS
    'Denormalised profile for fast portal pages: the warehouse''s profile_360, masked, '
    'without ML features';
COMMENT ON COLUMN public.profile_summary.aadhaar_number IS 'masked by the warehouse: redact';
COMMENT ON COLUMN public.profile_summary.jan_aadhaar IS 'masked by the warehouse: partial:4';
COMMENT ON COLUMN public.profile_summary.mobile IS 'masked by the warehouse: partial:4';
COMMENT ON COLUMN public.profile_summary.email IS 'masked by the warehouse: email';
COMMENT ON COLUMN public.profile_summary.income_band IS
    'masked by the warehouse: redact:CONFIDENTIAL';

-- --- operations: heartbeats --------------------------------------------------------------------

CREATE TABLE IF NOT EXISTS ops.heartbeat_out (
    heartbeat_id  bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    sender        text NOT NULL DEFAULT current_database(),
    sent_at       timestamptz NOT NULL DEFAULT clock_timestamp()
);
COMMENT ON TABLE ops.heartbeat_out IS
    'One row per heartbeat written here; replicated to the other side''s ops.heartbeat_in';

CREATE TABLE IF NOT EXISTS ops.heartbeat_in (
    heartbeat_id  bigint PRIMARY KEY,
    sender        text NOT NULL,
    sent_at       timestamptz NOT NULL,
    -- filled by the apply (a column the source lacks keeps its default): arrival - sent
    -- is the commit-to-apply delay, both clocks being the same host's in the demo
    arrived_at    timestamptz NOT NULL DEFAULT clock_timestamp()
);
COMMENT ON TABLE ops.heartbeat_in IS 'Heartbeats from the warehouse, with their arrival time';
