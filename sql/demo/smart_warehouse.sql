-- replicator demo schema: smart_warehouse, the AI/ML warehouse of the seed
-- (seed/data-integration-strategy.md). Source of truth for golden records, 360-degree
-- profiles, eligibility, decisions and forecasts; lands what the citizen portal sends
-- back in schema `portal`.
--
-- Usage (idempotent: run it again at any time):
--   psql -d smart_warehouse -f sql/demo/smart_warehouse.sql
-- `replicator demo` runs it through psycopg, leaving out the psql meta-commands (\set).
--
-- Keys: tables written on both databases (decision.applications, intimation.consents)
-- use UUIDs, because sequences are not replicated and two sides counting on their own
-- would hand out the same numbers. One-way tables may use identities.
-- No foreign keys point at tables another pipeline fills: the daemon applies in
-- `session_replication_role = replica`, and the pipelines do not order against each other.
-- Columns that are masked on their way to the portal say so in their comments.

\set ON_ERROR_STOP on

CREATE SCHEMA IF NOT EXISTS eligibility;
CREATE SCHEMA IF NOT EXISTS decision;
CREATE SCHEMA IF NOT EXISTS forecast;
CREATE SCHEMA IF NOT EXISTS intimation;
CREATE SCHEMA IF NOT EXISTS detection;
CREATE SCHEMA IF NOT EXISTS portal;
CREATE SCHEMA IF NOT EXISTS ops;

COMMENT ON SCHEMA eligibility IS 'Scheme master, eligibility rules, snapshots and candidate lists';
COMMENT ON SCHEMA decision IS 'Application decisions, approvals and risk scores';
COMMENT ON SCHEMA forecast IS 'Benefit forecasts from the prediction models';
COMMENT ON SCHEMA intimation IS 'Consents, intimation campaigns and the alerts they send';
COMMENT ON SCHEMA detection IS 'Beneficiary detection cases (duplicates, deceased, mismatches)';
COMMENT ON SCHEMA portal IS 'Landing zone: citizen portal data replicated into the warehouse';
COMMENT ON SCHEMA ops IS 'Operations: replication heartbeats that measure sync latency';

-- --- master identities -----------------------------------------------------------------

CREATE TABLE IF NOT EXISTS public.golden_records (
    golden_record_id  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    aadhaar_number    text,                 -- 12 digits, 'NNNN NNNN NNNN'
    jan_aadhaar       text,                 -- family id, 'NNNN-NNNN-NNNN'
    full_name         text NOT NULL,
    gender            text CHECK (gender IN ('F', 'M', 'X')),
    date_of_birth     date,
    mobile            text,
    email             text,
    district_id       int NOT NULL,
    address           jsonb,
    income_band       text,
    confidence_score  numeric(4, 3) NOT NULL DEFAULT 0,   -- entity resolution confidence
    source_systems    text[] NOT NULL DEFAULT '{}',       -- systems that contributed
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX IF NOT EXISTS golden_records_aadhaar ON public.golden_records (aadhaar_number);
CREATE INDEX IF NOT EXISTS golden_records_jan_aadhaar ON public.golden_records (jan_aadhaar);
CREATE INDEX IF NOT EXISTS golden_records_district ON public.golden_records (district_id);
COMMENT ON TABLE public.golden_records IS
    'Master citizen identities (entity resolution output); never leaves the warehouse';

CREATE TABLE IF NOT EXISTS public.profile_360 (
    profile_id             uuid PRIMARY KEY,   -- = golden_records.golden_record_id
    full_name              text NOT NULL,
    gender                 text,
    date_of_birth          date,
    district_id            int NOT NULL,
    aadhaar_number         text,
    jan_aadhaar            text,
    mobile                 text,
    email                  text,
    income_band            text,
    vulnerability_level    text
        CHECK (vulnerability_level IN ('low', 'medium', 'high', 'critical')),
    eligibility_score      numeric(5, 2),     -- 0..100, best score over active schemes
    profile_confidence     numeric(4, 3),
    eligible_scheme_count  int NOT NULL DEFAULT 0,
    features               jsonb,              -- ML feature vector; stays in the warehouse
    model_version          text,
    updated_at             timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT profile_360_golden_record
        FOREIGN KEY (profile_id) REFERENCES public.golden_records (golden_record_id)
);
CREATE INDEX IF NOT EXISTS profile_360_district
    ON public.profile_360 (district_id, vulnerability_level);
COMMENT ON TABLE public.profile_360 IS
    '360-degree profile: golden record identity plus ML features; '
    'feeds the portal''s profile_summary';
COMMENT ON COLUMN public.profile_360.aadhaar_number IS
    'masked to the portal: redact (***MASKED***)';
COMMENT ON COLUMN public.profile_360.jan_aadhaar IS
    'masked to the portal: partial:4 (****-****-1234)';
COMMENT ON COLUMN public.profile_360.mobile IS 'masked to the portal: partial:4 (******5678)';
COMMENT ON COLUMN public.profile_360.email IS 'masked to the portal: email (u***@example.com)';
COMMENT ON COLUMN public.profile_360.income_band IS 'masked to the portal: redact:CONFIDENTIAL';

-- --- eligibility ------------------------------------------------------------------------

CREATE TABLE IF NOT EXISTS eligibility.scheme_master (
    scheme_code          text PRIMARY KEY,    -- e.g. 'SJE-PEN-014'
    name                 text NOT NULL,
    name_hi              text,                -- Hindi name shown on the portal
    department           text NOT NULL,
    category             text NOT NULL,
    description          text,
    benefit_type         text NOT NULL
        CHECK (benefit_type IN ('cash', 'kind', 'service', 'subsidy')),
    benefit_amount       numeric(12, 2),
    eligibility_summary  jsonb NOT NULL DEFAULT '{}',   -- criteria in plain terms for citizens
    target_districts     int[],               -- NULL: state-wide
    is_active            boolean NOT NULL DEFAULT true,
    valid_from           date NOT NULL,
    valid_to             date,
    internal_notes       text,                -- departmental notes: not replicated
    version              int NOT NULL DEFAULT 1,
    updated_at           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS scheme_master_department ON eligibility.scheme_master (department);
COMMENT ON TABLE eligibility.scheme_master IS
    'Scheme catalog; the portal''s public.schemes is a copy';

CREATE TABLE IF NOT EXISTS eligibility.eligibility_rules (
    rule_id       uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    scheme_code   text NOT NULL REFERENCES eligibility.scheme_master (scheme_code),
    rule_version  int NOT NULL DEFAULT 1,
    expression    jsonb NOT NULL,               -- e.g. {"income_band": ["BPL", "<1L"]}
    weight        numeric(4, 3) NOT NULL DEFAULT 1,
    is_active     boolean NOT NULL DEFAULT true,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS eligibility_rules_scheme ON eligibility.eligibility_rules (scheme_code);
COMMENT ON TABLE eligibility.eligibility_rules IS
    'Rule sets the eligibility engine evaluates; warehouse only';

CREATE TABLE IF NOT EXISTS eligibility.eligibility_snapshots (
    snapshot_id        uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    golden_record_id   uuid NOT NULL,
    scheme_code        text NOT NULL,
    eligibility_score  numeric(5, 2) NOT NULL,  -- 0..100: not masked (the seed's rule)
    status             text NOT NULL
        CHECK (status IN ('eligible', 'likely_eligible', 'needs_documents', 'not_eligible')),
    income_band        text,                    -- the band the evaluation used
    district_id        int NOT NULL,
    reasons            jsonb,
    rule_version       int NOT NULL DEFAULT 1,
    model_version      text,
    evaluated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS eligibility_snapshots_profile
    ON eligibility.eligibility_snapshots (golden_record_id, scheme_code);
CREATE INDEX IF NOT EXISTS eligibility_snapshots_scheme
    ON eligibility.eligibility_snapshots (scheme_code, status);
COMMENT ON TABLE eligibility.eligibility_snapshots IS
    'Eligibility evaluations; the portal shows them as eligibility hints';
COMMENT ON COLUMN eligibility.eligibility_snapshots.income_band IS
    'masked to the portal: redact:CONFIDENTIAL';

CREATE TABLE IF NOT EXISTS eligibility.candidate_lists (
    list_entry_id     uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    scheme_code       text NOT NULL,
    golden_record_id  uuid NOT NULL,
    rank              int NOT NULL,
    score             numeric(5, 2) NOT NULL,
    district_id       int NOT NULL,
    generated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS candidate_lists_scheme
    ON eligibility.candidate_lists (scheme_code, rank);
COMMENT ON TABLE eligibility.candidate_lists IS
    'Ranked likely beneficiaries per scheme, for outreach; warehouse only';

-- --- decisions (two-way with the portal's service_applications) -----------------------

CREATE TABLE IF NOT EXISTS decision.applications (
    application_id    uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    citizen_id        uuid NOT NULL,            -- the portal account that applied
    golden_record_id  uuid,
    scheme_code       text NOT NULL,
    status            text NOT NULL CHECK (status IN ('submitted', 'under_review',
                          'documents_required', 'approved', 'rejected', 'withdrawn')),
    form_data         jsonb,
    submitted_at      timestamptz NOT NULL DEFAULT now(),
    decided_at        timestamptz,
    decision_reason   text,
    approved_amount   numeric(12, 2),
    district_id       int NOT NULL,
    channel           text NOT NULL DEFAULT 'web',   -- web, app, e-mitra kiosk
    updated_at        timestamptz NOT NULL DEFAULT now(),
    -- decision engine only: never sent to the portal (excluded in the pipeline)
    risk_score        numeric(5, 2),
    risk_flags        jsonb,
    model_version     text,
    reviewer          text
);
CREATE INDEX IF NOT EXISTS applications_pending
    ON decision.applications (submitted_at)
    WHERE status IN ('submitted', 'under_review', 'documents_required');
CREATE INDEX IF NOT EXISTS applications_citizen ON decision.applications (citizen_id);
COMMENT ON TABLE decision.applications IS
    'Applications (submitted on the portal) and their decisions (made here); '
    'two-way with the portal''s service_applications, newer updated_at wins';

-- --- forecasts ----------------------------------------------------------------------------

CREATE TABLE IF NOT EXISTS forecast.benefit_forecasts (
    forecast_id       uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    golden_record_id  uuid NOT NULL,
    scheme_code       text NOT NULL,
    forecast_period   date NOT NULL,            -- first day of the forecast month
    predicted_amount  numeric(12, 2) NOT NULL,
    probability       numeric(4, 3) NOT NULL,
    lower_bound       numeric(12, 2),
    upper_bound       numeric(12, 2),
    model_version     text NOT NULL,
    features          jsonb,                    -- model inputs; stay in the warehouse
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS benefit_forecasts_profile
    ON forecast.benefit_forecasts (golden_record_id, forecast_period);
COMMENT ON TABLE forecast.benefit_forecasts IS 'Benefit predictions per citizen, scheme and month';

-- --- intimation ---------------------------------------------------------------------------

CREATE TABLE IF NOT EXISTS intimation.campaigns (
    campaign_id       uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    scheme_code       text NOT NULL,
    name              text NOT NULL,
    channel           text NOT NULL CHECK (channel IN ('sms', 'email', 'portal', 'whatsapp')),
    target_districts  int[],
    starts_at         timestamptz NOT NULL,
    ends_at           timestamptz,
    status            text NOT NULL DEFAULT 'planned'
        CHECK (status IN ('planned', 'running', 'done', 'cancelled')),
    created_at        timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE intimation.campaigns IS 'Intimation campaigns about schemes; warehouse only';

CREATE TABLE IF NOT EXISTS intimation.alerts (
    alert_id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    golden_record_id  uuid NOT NULL,
    campaign_id       uuid,
    scheme_code       text,
    kind              text NOT NULL
        CHECK (kind IN ('eligibility', 'deadline', 'decision', 'payment', 'document')),
    title             text NOT NULL,
    body              text NOT NULL,
    mobile            text,                     -- where an SMS went
    email             text,
    priority          smallint NOT NULL DEFAULT 3,
    channel           text NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    expires_at        timestamptz
);
CREATE INDEX IF NOT EXISTS alerts_profile ON intimation.alerts (golden_record_id, created_at);
COMMENT ON TABLE intimation.alerts IS 'ML-driven alerts; the portal shows them as notifications';
COMMENT ON COLUMN intimation.alerts.mobile IS 'masked to the portal: partial:4';
COMMENT ON COLUMN intimation.alerts.email IS 'masked to the portal: email';

CREATE TABLE IF NOT EXISTS intimation.consents (
    consent_id        uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    citizen_id        uuid NOT NULL,
    golden_record_id  uuid,
    purpose           text NOT NULL
        CHECK (purpose IN ('scheme_intimation', 'data_sharing', 'sms_alerts', 'analytics')),
    channel           text NOT NULL,
    status            text NOT NULL CHECK (status IN ('granted', 'revoked')),
    mobile            text,                     -- contact for intimations, filled here
    granted_at        timestamptz,
    revoked_at        timestamptz,
    updated_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS consents_citizen ON intimation.consents (citizen_id, purpose);
COMMENT ON TABLE intimation.consents IS
    'Consent records; two-way with the portal''s consents, newer updated_at wins';
COMMENT ON COLUMN intimation.consents.mobile IS
    'masked to the portal: partial:4; never replicated back (excluded on portal -> warehouse)';

-- --- detection ------------------------------------------------------------------------------

CREATE TABLE IF NOT EXISTS detection.cases (
    case_id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    golden_record_id  uuid NOT NULL,
    case_type         text NOT NULL CHECK (case_type IN ('duplicate_beneficiary',
                          'deceased_beneficiary', 'income_mismatch', 'ineligible_receipt')),
    risk_score        numeric(5, 2) NOT NULL,
    status            text NOT NULL DEFAULT 'open'
        CHECK (status IN ('open', 'investigating', 'confirmed', 'dismissed')),
    evidence          jsonb,
    district_id       int NOT NULL,
    opened_at         timestamptz NOT NULL DEFAULT now(),
    closed_at         timestamptz
);
CREATE INDEX IF NOT EXISTS cases_open ON detection.cases (district_id) WHERE status = 'open';
COMMENT ON TABLE detection.cases IS 'Beneficiary detection cases; warehouse only';

-- --- landing zone: what the portal sends back ----------------------------------------------

CREATE TABLE IF NOT EXISTS portal.citizens (
    citizen_id          uuid PRIMARY KEY,
    golden_record_id    uuid,
    full_name           text NOT NULL,
    gender              text,
    date_of_birth       date,
    mobile              text NOT NULL,
    email               text,
    district_id         int NOT NULL,
    address             jsonb,
    preferred_language  text NOT NULL DEFAULT 'hi',
    registered_at       timestamptz NOT NULL,
    last_login_at       timestamptz,
    updated_at          timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS portal_citizens_golden ON portal.citizens (golden_record_id);
COMMENT ON TABLE portal.citizens IS
    'Citizen profile updates from the portal (landing copy); '
    'entity resolution merges them into golden_records';

CREATE TABLE IF NOT EXISTS portal.documents (
    document_id          uuid PRIMARY KEY,
    citizen_id           uuid NOT NULL,
    application_id       uuid,
    doc_type             text NOT NULL,
    file_name            text NOT NULL,
    mime_type            text NOT NULL,
    size_bytes           bigint NOT NULL,
    sha256               text NOT NULL,
    storage_url          text NOT NULL,
    verification_status  text NOT NULL,
    uploaded_at          timestamptz NOT NULL,
    verified_at          timestamptz,
    updated_at           timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS portal_documents_citizen ON portal.documents (citizen_id);
COMMENT ON TABLE portal.documents IS 'Document metadata from the portal (the files stay there)';

CREATE TABLE IF NOT EXISTS portal.feedback (
    feedback_id   uuid PRIMARY KEY,
    citizen_id    uuid,
    category      text NOT NULL,
    subject       text NOT NULL,
    message       text NOT NULL,
    rating        smallint,
    scheme_code   text,
    channel       text NOT NULL,
    status        text NOT NULL,
    submitted_at  timestamptz NOT NULL,
    resolved_at   timestamptz
);
COMMENT ON TABLE portal.feedback IS 'Feedback and complaints from the portal';

CREATE TABLE IF NOT EXISTS portal.user_events (
    event_id     bigint PRIMARY KEY,           -- the portal's identity; one-way, so safe
    session_id   uuid NOT NULL,
    citizen_id   uuid,                          -- NULL: not logged in
    event_type   text NOT NULL,
    page         text NOT NULL,
    scheme_code  text,
    device       text NOT NULL,
    district_id  int,
    properties   jsonb,
    occurred_at  timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS portal_user_events_time ON portal.user_events (occurred_at);
COMMENT ON TABLE portal.user_events IS
    'Portal behaviour events (clicks, searches, views) for analytics';

-- --- operations: heartbeats ------------------------------------------------------------------

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
COMMENT ON TABLE ops.heartbeat_in IS 'Heartbeats from the portal, with their arrival time';
