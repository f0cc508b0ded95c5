"""The demo's data: the seed's volumes, the initial rows and a compressed day of traffic.

Everything is generated inside PostgreSQL (``generate_series`` and a few SQL helper
functions in schema ``demo_gen``), so seeding 100K profiles takes seconds and the
writers only send small statements. Person ``k`` gets the same name, mobile and
district on both databases: the warehouse's golden record ``k`` and the portal's
account ``k`` are one citizen.

Volumes (:class:`Volumes`) and pacing (:func:`due`) are pure; :class:`Writer` runs one
database connection in a thread. Never used by the daemon.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import psycopg

Side = Literal["warehouse", "portal"]

# Daily volumes from the seed's "Data Volume Estimates"; the last few are not in its table
# and are marked as ours.
PROFILES: Final = 100_000  # golden records / 360 profiles / portal accounts
SCHEMES: Final = 200

# --- the helpers both databases get --------------------------------------------------------

GENERATORS: Final = r"""
CREATE SCHEMA IF NOT EXISTS demo_gen;
COMMENT ON SCHEMA demo_gen IS 'replicator demo: data generators (not replicated)';

-- Every helper is one expression without FROM, with explicit ::text casts, and declared no
-- less volatile than its body: PostgreSQL then inlines it, which keeps seeding fast.
CREATE OR REPLACE FUNCTION demo_gen.uid(kind text, n bigint) RETURNS uuid
    LANGUAGE sql IMMUTABLE AS $$ SELECT md5(kind || ':' || n::text)::uuid $$;
CREATE OR REPLACE FUNCTION demo_gen.rnd(n bigint) RETURNS bigint
    LANGUAGE sql VOLATILE AS $$ SELECT 1 + floor(random() * n)::bigint $$;
CREATE OR REPLACE FUNCTION demo_gen.pick(items text[]) RETURNS text
    LANGUAGE sql VOLATILE AS $$ SELECT items[1 + floor(random() * cardinality(items))::int] $$;
-- a random moment between max_days and min_days ago: seeded rows whose later events are
-- dated ``t + min_days`` stay in the past (newer_wins must never meet a future timestamp)
CREATE OR REPLACE FUNCTION demo_gen.ago(max_days float8, min_days float8 DEFAULT 0)
    RETURNS timestamptz LANGUAGE sql VOLATILE AS $$
    SELECT now() - make_interval(secs => (min_days + random() * (max_days - min_days)) * 86400) $$;

-- person k: the same citizen on both databases
CREATE OR REPLACE FUNCTION demo_gen.first_name(k bigint) RETURNS text
    LANGUAGE sql IMMUTABLE AS $$ SELECT (ARRAY[
    'Aarav','Vivaan','Aditya','Arjun','Ramesh','Suresh','Mahesh','Manoj','Vikram','Rajendra',
    'Mohan','Bhanwar','Laxman','Dinesh','Imran','Farhan','Harpreet','Gopal','Prakash','Kishan',
    'Ananya','Diya','Saanvi','Kavya','Priya','Sunita','Geeta','Lakshmi','Pooja','Rekha',
    'Kamla','Santosh','Savitri','Meena','Ayesha','Gurpreet','Radha','Sarita','Anita','Kiran'
    ])[1 + mod(k * 7, 40)] $$;
CREATE OR REPLACE FUNCTION demo_gen.gender(k bigint) RETURNS text
    LANGUAGE sql IMMUTABLE AS $$ SELECT CASE WHEN mod(k * 7, 40) < 20 THEN 'M' ELSE 'F' END $$;
CREATE OR REPLACE FUNCTION demo_gen.last_name(k bigint) RETURNS text
    LANGUAGE sql IMMUTABLE AS $$ SELECT (ARRAY[
    'Sharma','Meena','Choudhary','Singh','Rathore','Gupta','Agarwal','Verma','Kumawat','Saini',
    'Prajapat','Bishnoi','Gurjar','Mali','Yadav','Khan','Bairwa','Regar','Joshi','Shekhawat',
    'Jain','Soni','Jat','Purohit'
    ])[1 + mod(k * 11, 24)] $$;
CREATE OR REPLACE FUNCTION demo_gen.full_name(k bigint) RETURNS text
    LANGUAGE sql IMMUTABLE AS $$ SELECT demo_gen.first_name(k) || ' ' || demo_gen.last_name(k) $$;
CREATE OR REPLACE FUNCTION demo_gen.district(k bigint) RETURNS int
    LANGUAGE sql IMMUTABLE AS $$ SELECT (1 + mod(k * 13, 50))::int $$;
CREATE OR REPLACE FUNCTION demo_gen.dob(k bigint) RETURNS date
    LANGUAGE sql IMMUTABLE AS $$ SELECT date '1940-01-01' + mod(k * 7717, 25000)::int $$;
-- 10 digits starting 6-9; distinct for distinct k below 10^9 (982451653 is a prime, so
-- k -> k * p mod 10^9 is one to one)
CREATE OR REPLACE FUNCTION demo_gen.mobile(k bigint) RETURNS text
    LANGUAGE sql IMMUTABLE AS $$
    SELECT (6 + mod(k, 4))::text || lpad(mod(k * 982451653, 1000000000)::text, 9, '0') $$;
-- one in twenty has no email: NULL must stay NULL under every mask
CREATE OR REPLACE FUNCTION demo_gen.email(k bigint) RETURNS text
    LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN mod(k, 20) = 0 THEN NULL ELSE
        lower(demo_gen.first_name(k)) || '.' || lower(demo_gen.last_name(k)) || k::text || '@' ||
        (ARRAY['gmail.com','yahoo.co.in','rediffmail.com','outlook.com',
               'rajasthan.gov.in'])[1 + mod(k, 5)]
    END $$;
-- 'NNNN NNNN NNNN', first digit 2-9; distinct for distinct k (982451653 is prime)
CREATE OR REPLACE FUNCTION demo_gen.aadhaar(k bigint) RETURNS text
    LANGUAGE sql STABLE AS $$
    SELECT to_char(200000000000 + mod(k * 982451653, 800000000000), 'FM0000 0000 0000') $$;
-- 'NNNN-NNNN-NNNN' as in the seed's masking example (2^31 - 1 is a prime)
CREATE OR REPLACE FUNCTION demo_gen.jan_aadhaar(k bigint) RETURNS text
    LANGUAGE sql STABLE AS $$
    SELECT to_char(100000000000 + mod(k * 2147483647, 900000000000), 'FM0000-0000-0000') $$;
CREATE OR REPLACE FUNCTION demo_gen.income_band(k bigint) RETURNS text
    LANGUAGE sql IMMUTABLE AS $$
    SELECT (ARRAY['BPL','<1L','1-2.5L','2.5-5L','5-10L','>10L'])[1 + mod(k * 17, 6)] $$;
CREATE OR REPLACE FUNCTION demo_gen.address(k bigint) RETURNS jsonb
    LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'line1', (1 + mod(k, 400))::text || ', ' || (ARRAY['Gandhi Nagar','Shastri Colony',
            'Mansarovar','Civil Lines','Nehru Bazar','Station Road','Malviya Nagar',
            'Ward 7'])[1 + mod(k, 8)],
        'pin', (302000 + mod(k * 37, 45000))::text,
        'district_id', demo_gen.district(k)) $$;
-- scheme s: department prefix and number, e.g. 'SJE-0014'
CREATE OR REPLACE FUNCTION demo_gen.scheme_code(s bigint) RETURNS text
    LANGUAGE sql IMMUTABLE AS $$
    SELECT (ARRAY['SJE','HLT','EDU','AGR','WCD','LAB','RDV','MIN'])[1 + mod(s, 8)] || '-' ||
           lpad(s::text, 4, '0') $$;
"""

# --- the initial rows ----------------------------------------------------------------------

WAREHOUSE_SEED: Final[tuple[tuple[str, str], ...]] = (
    (
        "public.golden_records",
        """
INSERT INTO public.golden_records (golden_record_id, aadhaar_number, jan_aadhaar, full_name,
    gender, date_of_birth, mobile, email, district_id, address, income_band, confidence_score,
    source_systems, created_at, updated_at)
SELECT demo_gen.uid('gr', k), demo_gen.aadhaar(k), demo_gen.jan_aadhaar(k), demo_gen.full_name(k),
       demo_gen.gender(k), demo_gen.dob(k), demo_gen.mobile(k), demo_gen.email(k),
       demo_gen.district(k), demo_gen.address(k), demo_gen.income_band(k),
       round((0.6 + random() * 0.4)::numeric, 3),
       (ARRAY['{jan_aadhaar,ration_card}','{jan_aadhaar,pension_portal}',
              '{jan_aadhaar,sso,ration_card}'])[1 + mod(k, 3)]::text[],
       t, t + make_interval(secs => random() * 86400 * 30)
  FROM generate_series(1, %(profiles)s) k,
       LATERAL (SELECT demo_gen.ago(400, 30) + k * '0 s'::interval) x(t)
""",
    ),
    (
        "public.profile_360",
        """
INSERT INTO public.profile_360 (profile_id, full_name, gender, date_of_birth, district_id,
    aadhaar_number, jan_aadhaar, mobile, email, income_band, vulnerability_level,
    eligibility_score, profile_confidence, eligible_scheme_count, features, model_version,
    updated_at)
SELECT golden_record_id, full_name, gender, date_of_birth, district_id, aadhaar_number,
       jan_aadhaar, mobile, email, income_band,
       demo_gen.pick('{low,low,medium,medium,high,critical}'),
       round((random() * 100)::numeric, 2), confidence_score, floor(random() * 8)::int,
       jsonb_build_object('household_size', 1 + floor(random() * 8)::int,
                          'land_holding_ha', round((random() * 4)::numeric, 2),
                          'has_disability', random() < 0.05,
                          'scheme_history', floor(random() * 5)::int),
       'profile-v2.4', updated_at
  FROM public.golden_records
""",
    ),
    (
        "eligibility.scheme_master",
        """
INSERT INTO eligibility.scheme_master (scheme_code, name, name_hi, department, category,
    description, benefit_type, benefit_amount, eligibility_summary, target_districts,
    is_active, valid_from, valid_to, internal_notes, version, updated_at)
SELECT demo_gen.scheme_code(s),
       'Mukhyamantri ' || kind || ' Yojana ' || s,
       'मुख्यमंत्री ' || kind_hi || ' योजना ' || s,
       (ARRAY['Social Justice and Empowerment','Medical and Health','School Education',
              'Agriculture','Women and Child Development','Labour','Rural Development',
              'Minority Affairs'])[1 + mod(s, 8)],
       (ARRAY['pension','health','education','agriculture','women','labour','housing',
              'scholarship'])[1 + mod(s, 8)],
       'Support for eligible families under the ' || kind || ' programme',
       (ARRAY['cash','kind','service','subsidy'])[1 + mod(s, 4)],
       round((500 + random() * 49500)::numeric, -2),
       jsonb_build_object('income_bands', '["BPL", "<1L", "1-2.5L"]'::jsonb,
                          'min_age', 18 + mod(s, 3) * 20, 'documents',
                              '["jan_aadhaar", "bank_passbook"]'::jsonb),
       CASE WHEN mod(s, 5) = 0 THEN ARRAY[demo_gen.district(s), demo_gen.district(s + 1)] END,
       mod(s, 10) <> 0, date '2023-04-01' + mod(s, 300), NULL,
       'file ' || s || '/2024, budget head 22' || lpad(mod(s, 99)::text, 2, '0'), 1, now()
  FROM generate_series(1, %(schemes)s) s,
       LATERAL (SELECT (ARRAY['Pension','Chiranjeevi Health','Scholarship','Kisan Samman',
                              'Matritva Poshan','Shramik Kalyan','Awas','Anuprati'])[1 + mod(s, 8)],
                       (ARRAY['पेंशन','चिरंजीवी स्वास्थ्य','छात्रवृत्ति','किसान सम्मान',
                              'मातृत्व पोषण','श्रमिक कल्याण','आवास',
                              'अनुप्रति'])[1 + mod(s, 8)]) n(kind, kind_hi)
""",
    ),
    (
        "eligibility.eligibility_rules",
        """
INSERT INTO eligibility.eligibility_rules (scheme_code, rule_version, expression, weight)
SELECT demo_gen.scheme_code(s), r,
       jsonb_build_object('field', (ARRAY['income_band','age','district_id'])[r],
                          'op', (ARRAY['in','>=','in'])[r]),
       round((0.2 + random() * 0.8)::numeric, 3)
  FROM generate_series(1, %(schemes)s) s, generate_series(1, 3) r
""",
    ),
    (
        "eligibility.eligibility_snapshots",
        """
INSERT INTO eligibility.eligibility_snapshots (snapshot_id, golden_record_id, scheme_code,
    eligibility_score, status, income_band, district_id, reasons, rule_version, model_version,
    evaluated_at)
SELECT demo_gen.uid('es', n), demo_gen.uid('gr', k),
       demo_gen.scheme_code(demo_gen.rnd(%(schemes)s)),
       score, CASE WHEN score > 75 THEN 'eligible' WHEN score > 50 THEN 'likely_eligible'
                   WHEN score > 35 THEN 'needs_documents' ELSE 'not_eligible' END,
       demo_gen.income_band(k), demo_gen.district(k),
       jsonb_build_object('matched', floor(random() * 4)::int, 'missing_documents', score <= 50),
       1, 'elig-v3.2', demo_gen.ago(90)
  FROM generate_series(1, %(snapshots)s) n,
       LATERAL (SELECT demo_gen.rnd(%(profiles)s) + n * 0,
                       round((random() * 100)::numeric, 2)) x(k, score)
""",
    ),
    (
        "eligibility.candidate_lists",
        """
INSERT INTO eligibility.candidate_lists (scheme_code, golden_record_id, rank, score, district_id)
SELECT demo_gen.scheme_code(1 + mod(n, %(schemes)s)), demo_gen.uid('gr', k),
       1 + n / %(schemes)s, round((50 + random() * 50)::numeric, 2), demo_gen.district(k)
  FROM generate_series(0, %(candidates)s - 1) n,
       LATERAL (SELECT demo_gen.rnd(%(profiles)s) + n * 0) x(k)
""",
    ),
    (
        "forecast.benefit_forecasts",
        """
INSERT INTO forecast.benefit_forecasts (forecast_id, golden_record_id, scheme_code,
    forecast_period, predicted_amount, probability, lower_bound, upper_bound, model_version,
    features, created_at, updated_at)
SELECT demo_gen.uid('fc', n), demo_gen.uid('gr', demo_gen.rnd(%(profiles)s)),
       demo_gen.scheme_code(demo_gen.rnd(%(schemes)s)),
       date_trunc('month', now())::date + make_interval(months => mod(n, 6)::int), amount,
       round(random()::numeric, 3), round(amount * 0.8, 2), round(amount * 1.2, 2),
       'forecast-v1.9', jsonb_build_object('seasonality', round(random()::numeric, 3)), t, t
  FROM generate_series(1, %(forecasts)s) n,
       LATERAL (SELECT round((200 + random() * 9800)::numeric, 2) + n * 0,
                       demo_gen.ago(60)) x(amount, t)
""",
    ),
    (
        "intimation.campaigns",
        """
INSERT INTO intimation.campaigns (campaign_id, scheme_code, name, channel, target_districts,
    starts_at, ends_at, status)
SELECT demo_gen.uid('cp', c), demo_gen.scheme_code(c), 'Outreach wave ' || c,
       (ARRAY['sms','email','portal','whatsapp'])[1 + mod(c, 4)],
       ARRAY[demo_gen.district(c), demo_gen.district(c + 7)], now() - interval '30 days',
       now() + interval '60 days', 'running'
  FROM generate_series(1, %(campaigns)s) c
""",
    ),
    (
        "intimation.alerts",
        """
INSERT INTO intimation.alerts (alert_id, golden_record_id, campaign_id, scheme_code, kind,
    title, body, mobile, email, priority, channel, created_at, expires_at)
SELECT demo_gen.uid('al', n), demo_gen.uid('gr', k), demo_gen.uid('cp', c), demo_gen.scheme_code(c),
       'eligibility', 'You may be eligible for scheme ' || demo_gen.scheme_code(c),
       'Based on your profile you may qualify. Apply on the portal or at an e-Mitra kiosk.',
       demo_gen.mobile(k), demo_gen.email(k), 1 + mod(n, 3)::smallint,
       (ARRAY['sms','email','portal'])[1 + mod(n, 3)], t, t + interval '30 days'
  FROM generate_series(1, %(alerts)s) n,
       LATERAL (SELECT demo_gen.rnd(%(profiles)s) + n * 0, 1 + mod(n, %(campaigns)s),
                       demo_gen.ago(30)) x(k, c, t)
""",
    ),
    (
        "intimation.consents",
        """
INSERT INTO intimation.consents (consent_id, citizen_id, golden_record_id, purpose, channel,
    status, mobile, granted_at, revoked_at, updated_at)
SELECT demo_gen.uid('cs', n), demo_gen.uid('ct', n), demo_gen.uid('gr', n),
       (ARRAY['scheme_intimation','sms_alerts','data_sharing','analytics'])[1 + mod(n, 4)],
       'portal', CASE WHEN mod(n, 10) = 0 THEN 'revoked' ELSE 'granted' END,
       demo_gen.mobile(n), t, CASE WHEN mod(n, 10) = 0 THEN t + interval '3 days' END,
       t + interval '3 days'
  FROM generate_series(1, %(consents)s) n,
       LATERAL (SELECT demo_gen.ago(300, 3) + n * '0 s'::interval) x(t)
""",
    ),
    (
        "detection.cases",
        """
INSERT INTO detection.cases (golden_record_id, case_type, risk_score, status, evidence, district_id)
SELECT demo_gen.uid('gr', k),
       (ARRAY['duplicate_beneficiary','deceased_beneficiary','income_mismatch',
              'ineligible_receipt'])[1 + mod(n, 4)],
       round((40 + random() * 60)::numeric, 2),
       (ARRAY['open','investigating','confirmed','dismissed'])[1 + mod(n, 4)],
       jsonb_build_object('matched_records', 1 + mod(n, 3)), demo_gen.district(k)
  FROM generate_series(1, %(cases)s) n, LATERAL (SELECT demo_gen.rnd(%(profiles)s) + n * 0) x(k)
""",
    ),
)

PORTAL_SEED: Final[tuple[tuple[str, str], ...]] = (
    (
        "public.citizens",
        """
INSERT INTO public.citizens (citizen_id, golden_record_id, full_name, gender, date_of_birth,
    mobile, email, district_id, address, preferred_language, registered_at, last_login_at,
    updated_at)
SELECT demo_gen.uid('ct', k), demo_gen.uid('gr', k), demo_gen.full_name(k), demo_gen.gender(k),
       demo_gen.dob(k), demo_gen.mobile(k), demo_gen.email(k), demo_gen.district(k),
       demo_gen.address(k), CASE WHEN mod(k, 4) = 0 THEN 'en' ELSE 'hi' END, t,
       t + interval '20 days', t + interval '20 days'
  FROM generate_series(1, %(profiles)s) k,
       LATERAL (SELECT demo_gen.ago(700, 20) + k * '0 s'::interval) x(t)
""",
    ),
    (
        "public.service_applications",
        """
INSERT INTO public.service_applications (application_id, citizen_id, golden_record_id,
    scheme_code, status, form_data, submitted_at, decided_at, decision_reason, approved_amount,
    district_id, channel, updated_at)
SELECT demo_gen.uid('ap', n), demo_gen.uid('ct', k), demo_gen.uid('gr', k),
       demo_gen.scheme_code(demo_gen.rnd(%(schemes)s)), st,
       jsonb_build_object('household_size', 1 + mod(n, 7), 'bank_ifsc', 'SBIN000' || lpad(mod(n,
           9999)::text, 4, '0')),
       t, CASE WHEN st IN ('approved', 'rejected') THEN t + interval '5 days' END,
       CASE st WHEN 'approved' THEN 'criteria met' WHEN 'rejected' THEN 'income above limit' END,
       CASE WHEN st = 'approved' THEN round((500 + random() * 20000)::numeric, 2) END,
       demo_gen.district(k), (ARRAY['web','app','emitra'])[1 + mod(n, 3)],
       t + interval '5 days'
  FROM generate_series(1, %(applications)s) n,
       LATERAL (SELECT demo_gen.rnd(%(profiles)s) + n * 0, demo_gen.ago(120, 5),
                       (ARRAY['approved','approved','approved','approved','rejected','submitted',
                              'submitted','under_review','under_review',
                              'documents_required'])[1 + mod(n, 10)]
               ) x(k, t, st)
""",
    ),
    (
        "public.documents",
        """
INSERT INTO public.documents (document_id, citizen_id, application_id, doc_type, file_name,
    mime_type, size_bytes, sha256, storage_url, verification_status, uploaded_at, verified_at,
    updated_at)
SELECT demo_gen.uid('dc', n), demo_gen.uid('ct', demo_gen.rnd(%(profiles)s)),
       demo_gen.uid('ap', demo_gen.rnd(%(applications)s)), dt, dt || '_' || n || '.pdf',
       'application/pdf', 40000 + mod(n * 7919, 2000000), encode(sha256(n::text::bytea), 'hex'),
       's3://smart-citizen-docs/' || demo_gen.uid('dc', n), 'verified', t, t + interval '2 days',
       t + interval '2 days'
  FROM generate_series(1, %(documents)s) n,
       LATERAL (SELECT (ARRAY['income_certificate','caste_certificate','bank_passbook',
                              'ration_card','photo'])[1 + mod(n * 7, 5)],
                       demo_gen.ago(120, 2) + n * '0 s'::interval) x(dt, t)
""",
    ),
    (
        "public.payments",
        """
INSERT INTO public.payments (payment_id, application_id, citizen_id, amount, method, status,
    bank_reference, initiated_at, completed_at)
SELECT demo_gen.uid('pm', n), demo_gen.uid('ap', n), demo_gen.uid('ct', demo_gen.rnd(%(profiles)s)),
       round((500 + random() * 20000)::numeric, 2), (ARRAY['dbt','upi','neft'])[1 + mod(n, 3)],
       'completed', 'UTR' || lpad(mod(n * 104729, 1000000000)::text, 12, '0'), t,
           t + interval '1 day'
  FROM generate_series(1, %(payments)s) n,
       LATERAL (SELECT demo_gen.ago(90, 1) + n * '0 s'::interval) x(t)
""",
    ),
    (
        "public.feedback",
        """
INSERT INTO public.feedback (feedback_id, citizen_id, category, subject, message, rating,
    scheme_code, channel, status, submitted_at)
SELECT demo_gen.uid('fb', n), demo_gen.uid('ct', demo_gen.rnd(%(profiles)s)),
       (ARRAY['complaint','suggestion','praise','query'])[1 + mod(n, 4)],
       'About the portal (' || n || ')', 'The application status page could load faster.',
       1 + mod(n, 5)::smallint, demo_gen.scheme_code(1 + mod(n, %(schemes)s)), 'web', 'resolved',
       demo_gen.ago(200)
  FROM generate_series(1, %(feedback)s) n
""",
    ),
    (
        "public.user_events",
        """
INSERT INTO public.user_events (session_id, citizen_id, event_type, page, scheme_code, device,
    district_id, properties, occurred_at)
SELECT demo_gen.uid('ss', n / 12), demo_gen.uid('ct', 1 + mod(n / 12, %(profiles)s)),
       demo_gen.pick('{login,page_view,page_view,page_view,search,scheme_view,scheme_view,apply_start}'),
       demo_gen.pick('{/home,/schemes,/schemes/search,/applications,/profile,/documents}'),
       demo_gen.scheme_code(demo_gen.rnd(%(schemes)s)), demo_gen.pick('{android,ios,web,kiosk}'),
       demo_gen.district(n / 12), jsonb_build_object('duration_ms', floor(random() * 30000)::int),
       demo_gen.ago(7)
  FROM generate_series(1, %(events)s) n
""",
    ),
)


@dataclass(frozen=True, slots=True)
class Volumes:
    """Initial rows per table family, scaled from the seed (scale 1.0: ~100K profiles)."""

    profiles: int
    schemes: int
    snapshots: int
    candidates: int
    forecasts: int
    campaigns: int
    alerts: int
    consents: int
    cases: int
    applications: int
    documents: int
    payments: int
    feedback: int
    events: int

    @classmethod
    def scaled(cls, scale: float) -> Volumes:
        def n(full: int, least: int = 10) -> int:
            return max(least, round(full * scale))

        return cls(
            profiles=n(PROFILES, 100),
            schemes=n(SCHEMES, 8),
            snapshots=n(100_000),
            candidates=n(20_000),
            forecasts=n(50_000),
            campaigns=n(40, 4),
            alerts=n(20_000),
            consents=n(50_000),
            cases=n(2_000),
            applications=n(20_000, 20),
            documents=n(40_000),
            payments=n(8_000),
            feedback=n(3_000),
            events=n(100_000),
        )

    def params(self) -> dict[str, int]:
        """Every count, plus the size of the consents' hot set (both sides edit it)."""
        counts = {f: getattr(self, f) for f in self.__slots__}
        # even, so that consents above it split into even (warehouse) and odd (portal) ones
        counts["hot_consents"] = 2 * max(1, min(20, self.consents // 40))
        return counts


# --- a day of traffic ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StreamSpec:
    """One kind of change, with its daily volume (rows) and transaction sizes."""

    name: str
    side: Side
    per_day: int
    statement: str  # parameters: n (rows in this transaction), base (rows written before)
    max_batch: int = 20  # rows per source transaction: an event, or a small ML micro-batch
    label: str = ""
    bulk: bool = False  # a batch load: every ``per_day / loads`` rows in one transaction
    loads: int = 24  # batch loads per day (hourly)


def due(total: int, done: int, elapsed: float, duration: float) -> int:
    """Rows a stream should have written by ``elapsed`` seconds into a ``duration``-second
    day, minus those ``done``: the pacing of every writer (pure)."""
    if duration <= 0 or elapsed >= duration:
        return max(0, total - done)
    return max(0, math.floor(total * elapsed / duration) - done)


def bulk_due(total: int, done: int, elapsed: float, duration: float, loads: int) -> int:
    """A batch stream writes one load each ``duration / loads`` seconds (the last one
    takes the rounding remainder)."""
    if total <= 0:
        return 0
    loads = max(1, min(loads, total))
    if duration <= 0 or elapsed >= duration:
        return max(0, total - done)
    finished = math.floor(loads * elapsed / duration)
    return max(0, math.floor(total * finished / loads) - done)


_PORTAL_NEW_CITIZENS = """
INSERT INTO public.citizens (citizen_id, golden_record_id, full_name, gender, date_of_birth,
    mobile, email, district_id, address, registered_at, last_login_at, updated_at)
SELECT demo_gen.uid('ct', k), NULL, demo_gen.full_name(k), demo_gen.gender(k), demo_gen.dob(k),
       demo_gen.mobile(k), demo_gen.email(k), demo_gen.district(k), demo_gen.address(k),
       now(), now(), clock_timestamp()
  FROM generate_series(%(profiles)s + 1000000 + %(base)s + 1,
                       %(profiles)s + 1000000 + %(base)s + %(n)s) k
"""

TRAFFIC: Final[tuple[StreamSpec, ...]] = (
    # --- warehouse: ML outputs ---
    StreamSpec(
        "eligibility",
        "warehouse",
        50_000,
        """
WITH fresh AS (
    INSERT INTO eligibility.eligibility_snapshots (snapshot_id, golden_record_id, scheme_code,
        eligibility_score, status, income_band, district_id, reasons, rule_version,
        model_version, evaluated_at)
    SELECT demo_gen.uid('es', %(snapshots)s + %(base)s + i), demo_gen.uid('gr', k),
           demo_gen.scheme_code(demo_gen.rnd(%(schemes)s)), score,
           CASE WHEN score > 75 THEN 'eligible' WHEN score > 50 THEN 'likely_eligible'
                WHEN score > 35 THEN 'needs_documents' ELSE 'not_eligible' END,
           demo_gen.income_band(k), demo_gen.district(k),
           jsonb_build_object('matched', floor(random() * 4)::int), 2, 'elig-v3.3',
               clock_timestamp()
      FROM generate_series(1, %(n)s - %(n)s / 3) i,
           LATERAL (SELECT demo_gen.rnd(%(profiles)s) + i * 0,
                           round((random() * 100)::numeric, 2)) x(k, score)
    RETURNING 1
)
UPDATE eligibility.eligibility_snapshots
   SET eligibility_score = round((random() * 100)::numeric, 2), model_version = 'elig-v3.3',
       evaluated_at = clock_timestamp()
 WHERE snapshot_id IN (SELECT demo_gen.uid('es', demo_gen.rnd(%(snapshots)s + %(base)s) + i * 0)
                         FROM generate_series(1, %(n)s / 3) i)
""",
        max_batch=200,  # the scoring job writes micro-batches
        label="eligibility hints (new + re-scored)",
    ),
    StreamSpec(
        "forecasts",
        "warehouse",
        50_000,
        """
WITH fresh AS (
    INSERT INTO forecast.benefit_forecasts (forecast_id, golden_record_id, scheme_code,
        forecast_period, predicted_amount, probability, lower_bound, upper_bound,
        model_version, features, created_at, updated_at)
    SELECT demo_gen.uid('fc', %(forecasts)s + %(base)s + i), demo_gen.uid('gr',
        demo_gen.rnd(%(profiles)s)),
           demo_gen.scheme_code(demo_gen.rnd(%(schemes)s)),
           date_trunc('month', now())::date + make_interval(months => mod(i, 6)::int), amount,
           round(random()::numeric, 3), round(amount * 0.8, 2), round(amount * 1.2, 2),
           'forecast-v2.0', jsonb_build_object('seasonality', round(random()::numeric, 3)),
           clock_timestamp(), clock_timestamp()
      FROM generate_series(1, %(n)s - %(n)s / 4) i,
           LATERAL (SELECT round((200 + random() * 9800)::numeric, 2) + i * 0) x(amount)
    RETURNING 1
)
UPDATE forecast.benefit_forecasts
   SET predicted_amount = round(predicted_amount * (0.9 + random()::numeric * 0.2), 2),
       probability = round(random()::numeric, 3), model_version = 'forecast-v2.0',
       updated_at = clock_timestamp()
 WHERE forecast_id IN (SELECT demo_gen.uid('fc', demo_gen.rnd(%(forecasts)s + %(base)s) + i * 0)
                         FROM generate_series(1, %(n)s / 4) i)
""",
        max_batch=200,
        label="benefit forecasts (new + revised)",
    ),
    StreamSpec(
        "decisions",
        "warehouse",
        10_000,
        """
UPDATE decision.applications a
   SET status = d.status,
       decided_at = CASE WHEN d.status IN ('approved', 'rejected') THEN clock_timestamp() END,
       decision_reason = CASE d.status WHEN 'approved' THEN 'criteria met'
                                       WHEN 'rejected' THEN 'income above limit'
                                       ELSE 'bank passbook unreadable' END,
       approved_amount = CASE WHEN d.status = 'approved'
                              THEN round((500 + random() * 20000)::numeric, 2) END,
       risk_score = round((random() * 100)::numeric, 2), model_version = 'decision-v5.1',
       reviewer = 'auto', updated_at = clock_timestamp()
  FROM (SELECT application_id,
               demo_gen.pick('{approved,approved,approved,rejected,documents_required}') AS status
          -- the oldest waiting first; the inner constant LIMIT keeps the generic plan on
          -- the partial index
          FROM (SELECT application_id FROM decision.applications
                 WHERE status IN ('submitted', 'under_review', 'documents_required')
                 ORDER BY submitted_at LIMIT 100) oldest
         LIMIT %(n)s) d
 WHERE a.application_id = d.application_id
""",
        max_batch=25,
        label="decision updates",
    ),
    StreamSpec(
        "profiles",
        "warehouse",
        10_000,
        """
UPDATE public.profile_360
   SET eligibility_score = round((random() * 100)::numeric, 2),
       profile_confidence = round((0.6 + random() * 0.4)::numeric, 3),
       vulnerability_level = demo_gen.pick('{low,medium,high,critical}'),
       model_version = 'profile-v2.5', updated_at = clock_timestamp()
 WHERE profile_id IN (SELECT demo_gen.uid('gr', demo_gen.rnd(%(profiles)s) + i * 0)
                        FROM generate_series(1, %(n)s) i)
""",
        max_batch=50,
        label="profile score changes (ours)",
    ),
    StreamSpec(
        "alerts",
        "warehouse",
        5_000,
        """
INSERT INTO intimation.alerts (alert_id, golden_record_id, campaign_id, scheme_code, kind,
    title, body, mobile, email, priority, channel, created_at, expires_at)
SELECT demo_gen.uid('al', %(alerts)s + %(base)s + i), demo_gen.uid('gr', k), demo_gen.uid('cp', c),
       demo_gen.scheme_code(c), demo_gen.pick('{eligibility,deadline,decision,document}'),
       'Action needed for scheme ' || demo_gen.scheme_code(c),
       'Please check the portal: your application or eligibility changed.',
       demo_gen.mobile(k), demo_gen.email(k), 1, demo_gen.pick('{sms,email,portal}'),
       clock_timestamp(), clock_timestamp() + interval '14 days'
  FROM generate_series(1, %(n)s) i,
       LATERAL (SELECT demo_gen.rnd(%(profiles)s) + i * 0, demo_gen.rnd(%(campaigns)s)) x(k, c)
""",
        max_batch=10,
        label="alerts -> notifications (ours)",
    ),
    StreamSpec(
        "consents_w",
        "warehouse",
        1_000,
        # A third of them reconcile the status of a small hot set the portal edits too: real
        # conflicts, decided by newer_wins. The contact refreshes (mobile) touch only even
        # consents outside it, which the portal leaves alone: see "Limits" in
        # docs/README-demo.md for why a race on a one-way column of a two-way table diverges.
        """
WITH picked AS (
    SELECT DISTINCT ON (id) id, hot
      FROM generate_series(1, %(n)s) i,
           LATERAL (SELECT random() < 0.34 OR i < 0) h(hot),
           LATERAL (SELECT demo_gen.uid('cs', CASE WHEN hot THEN demo_gen.rnd(%(hot_consents)s)
               ELSE %(hot_consents)s + 2 * demo_gen.rnd((%(consents)s - %(hot_consents)s) / 2)
               END)) u(id)
)
UPDATE intimation.consents c
   SET mobile = CASE WHEN p.hot THEN c.mobile
                     ELSE demo_gen.mobile(demo_gen.rnd(%(profiles)s)) END,
       channel = CASE WHEN p.hot THEN c.channel ELSE 'sms' END,
       status = CASE WHEN NOT p.hot THEN c.status
                     WHEN c.status = 'granted' THEN 'revoked' ELSE 'granted' END,
       updated_at = clock_timestamp()
  FROM picked p
 WHERE c.consent_id = p.id
""",
        max_batch=3,
        label="consent contact refresh (ours)",
    ),
    StreamSpec(
        "catalog",
        "warehouse",
        max(1, SCHEMES // 10),
        """
UPDATE eligibility.scheme_master
   SET benefit_amount = round(benefit_amount * 1.05, -2), version = version + 1,
       updated_at = clock_timestamp()
 WHERE scheme_code IN (SELECT demo_gen.scheme_code(demo_gen.rnd(%(schemes)s) + i * 0)
                         FROM generate_series(1, %(n)s) i)
""",
        max_batch=SCHEMES,
        bulk=True,
        loads=2,
        label="scheme catalog (twice-daily batch)",
    ),
    # --- portal: what citizens do ---
    StreamSpec(
        "citizens",
        "portal",
        20_000,
        """
WITH moved AS (
    UPDATE public.citizens
       SET address = demo_gen.address(demo_gen.rnd(%(profiles)s)),
           email = coalesce(email, 'new.' || md5(random()::text) || '@gmail.com'),
           last_login_at = clock_timestamp(), updated_at = clock_timestamp()
     WHERE citizen_id IN (SELECT demo_gen.uid('ct', demo_gen.rnd(%(profiles)s) + i * 0)
                            FROM generate_series(1, %(n)s) i)
    RETURNING 1
)
SELECT count(*) FROM moved
""",
        max_batch=5,
        label="profile updates",
    ),
    StreamSpec(
        "registrations",
        "portal",
        2_000,
        _PORTAL_NEW_CITIZENS,
        max_batch=2,
        label="new registrations (ours)",
    ),
    StreamSpec(
        "applications",
        "portal",
        5_000,
        """
INSERT INTO public.service_applications (application_id, citizen_id, golden_record_id,
    scheme_code, status, form_data, district_id, channel, submitted_at, updated_at)
SELECT demo_gen.uid('ap', %(applications)s + %(base)s + i), demo_gen.uid('ct', k),
       demo_gen.uid('gr', k), demo_gen.scheme_code(demo_gen.rnd(%(schemes)s)), 'submitted',
       jsonb_build_object('household_size', 1 + mod(i, 7)), demo_gen.district(k),
       demo_gen.pick('{web,app,emitra}'), clock_timestamp(), clock_timestamp()
  FROM generate_series(1, %(n)s) i, LATERAL (SELECT demo_gen.rnd(%(profiles)s) + i * 0) x(k)
""",
        max_batch=2,
        label="application submissions",
    ),
    StreamSpec(
        "resubmissions",
        "portal",
        1_000,
        # citizens answer "documents required": races with the warehouse's decisions
        """
UPDATE public.service_applications
   SET status = 'under_review', form_data = form_data || '{"resubmitted": true}',
       updated_at = clock_timestamp()
 WHERE application_id IN (SELECT application_id FROM public.service_applications
                           WHERE status = 'documents_required'
                           ORDER BY random() LIMIT %(n)s)
""",
        max_batch=2,
        label="documents resubmitted (ours)",
    ),
    StreamSpec(
        "documents",
        "portal",
        15_000,
        """
INSERT INTO public.documents (document_id, citizen_id, application_id, doc_type, file_name,
    mime_type, size_bytes, sha256, storage_url, uploaded_at, updated_at)
SELECT demo_gen.uid('dc', %(documents)s + %(base)s + i), demo_gen.uid('ct',
    demo_gen.rnd(%(profiles)s)),
       demo_gen.uid('ap', demo_gen.rnd(%(applications)s)), dt, dt || '_' || i || '.pdf',
       'application/pdf', 40000 + floor(random() * 2000000)::bigint,
       encode(sha256(random()::text::bytea), 'hex'),
       's3://smart-citizen-docs/' || demo_gen.uid('dc', %(documents)s + %(base)s + i),
       clock_timestamp(), clock_timestamp()
  FROM generate_series(1, %(n)s) i,
       LATERAL (SELECT (ARRAY['income_certificate','caste_certificate','bank_passbook',
                              'ration_card','photo'])[1 + mod(%(base)s + i, 5)]) x(dt)
""",
        max_batch=4,
        label="document uploads (metadata)",
    ),
    StreamSpec(
        "feedback",
        "portal",
        1_000,
        """
INSERT INTO public.feedback (feedback_id, citizen_id, category, subject, message, rating,
    scheme_code, channel, submitted_at)
SELECT demo_gen.uid('fb', %(feedback)s + %(base)s + i), demo_gen.uid('ct',
    demo_gen.rnd(%(profiles)s)),
       demo_gen.pick('{complaint,suggestion,praise,query}'), 'Feedback ' || (%(base)s + i),
       'Status of my application is not updated.', 1 + floor(random() * 5)::smallint,
       demo_gen.scheme_code(demo_gen.rnd(%(schemes)s)), demo_gen.pick('{web,app,emitra}'),
           clock_timestamp()
  FROM generate_series(1, %(n)s) i
""",
        max_batch=1,
        label="feedback",
    ),
    StreamSpec(
        "consents_p",
        "portal",
        2_000,
        # revoke or re-grant: a third on the hot set the warehouse edits too, the rest on
        # odd consents (the warehouse refreshes contacts on even ones)
        """
UPDATE public.consents
   SET status = CASE status WHEN 'granted' THEN 'revoked' ELSE 'granted' END,
       revoked_at = CASE status WHEN 'granted' THEN clock_timestamp() END,
       granted_at = CASE status WHEN 'revoked' THEN clock_timestamp() ELSE granted_at END,
       updated_at = clock_timestamp()
 WHERE consent_id IN (
    SELECT demo_gen.uid('cs', CASE WHEN random() < 0.34 THEN demo_gen.rnd(%(hot_consents)s)
        ELSE %(hot_consents)s + 2 * demo_gen.rnd((%(consents)s - %(hot_consents)s) / 2) - 1
        END + i * 0)
      FROM generate_series(1, %(n)s) i)
""",
        max_batch=3,
        label="consents granted / revoked",
    ),
    StreamSpec(
        "user_events",
        "portal",
        500_000,
        """
INSERT INTO public.user_events (session_id, citizen_id, event_type, page, scheme_code, device,
    district_id, properties, occurred_at)
SELECT demo_gen.uid('ss', e / 12), demo_gen.uid('ct', k),
       (ARRAY['login','page_view','page_view','page_view','search','scheme_view','scheme_view',
              'apply_start','apply_submit','doc_upload'])[1 + mod(e, 10)],
       (ARRAY['/home','/schemes','/schemes/search','/applications','/profile',
              '/documents'])[1 + mod(e, 6)],
       demo_gen.scheme_code(1 + mod(e * 31, %(schemes)s)),
       (ARRAY['android','android','web','ios','kiosk'])[1 + mod(e / 12, 5)],
       demo_gen.district(k), jsonb_build_object('duration_ms', mod(e * 7919, 30000)),
       clock_timestamp()
  -- arithmetic, not random(): half a million rows a day must be cheap to make
  FROM generate_series(%(base)s::bigint + 1, %(base)s::bigint + %(n)s) e,
       LATERAL (SELECT 1 + mod((e / 12) * 48271, %(profiles)s)) x(k)
""",
        bulk=True,
        loads=24,
        max_batch=1_000_000,
        label="user behaviour events (hourly batches)",
    ),
)

# The writer connections and the streams each one plays: a few concurrent writers per
# database, as the ML jobs and the portal's application servers would be.
WRITERS: Final[tuple[tuple[str, Side, tuple[str, ...]], ...]] = (
    ("ml-scoring", "warehouse", ("eligibility", "profiles")),
    ("forecasting", "warehouse", ("forecasts", "alerts")),
    ("decisions", "warehouse", ("decisions", "consents_w", "catalog")),
    ("portal-app-1", "portal", ("citizens", "registrations", "applications", "resubmissions")),
    ("portal-app-2", "portal", ("documents", "feedback", "consents_p")),
    ("analytics", "portal", ("user_events",)),
)

HEARTBEAT: Final = "INSERT INTO ops.heartbeat_out DEFAULT VALUES RETURNING heartbeat_id"


@dataclass(slots=True)
class Stream:
    """A :class:`StreamSpec` scaled to this run, with what has been written so far."""

    spec: StreamSpec
    total: int
    done: int = 0
    transactions: int = 0
    _size: int | None = None  # the size of the next transaction, drawn when first owed

    def next_batch(self, elapsed: float, duration: float, rng: random.Random) -> int:
        """Rows for the next transaction now, or 0 to wait: a stream writes whole
        micro-batches (1..max_batch rows) once that many are owed, so transaction sizes
        do not depend on how fast the writer loops."""
        if self.spec.bulk:
            return bulk_due(self.total, self.done, elapsed, duration, self.spec.loads)
        owed = due(self.total, self.done, elapsed, duration)
        if owed <= 0:
            return 0
        if self._size is None:
            self._size = rng.randint(1, self.spec.max_batch)
        if owed < self._size and elapsed < duration:
            return 0
        # a writer that fell behind catches up in bigger transactions, never unbounded
        n = min(owed, 10 * self.spec.max_batch) if owed > 4 * self.spec.max_batch else self._size
        self._size = None
        return min(n, owed)


def plan_streams(scale: float) -> list[Stream]:
    return [Stream(spec, max(1, round(spec.per_day * scale))) for spec in TRAFFIC]


@dataclass
class Writer:
    """One connection that plays its streams over ``duration`` seconds, in a thread."""

    name: str
    dsn: str
    streams: Sequence[Stream]
    params: dict[str, int]
    duration: float
    stop: threading.Event
    seed: int = 0
    error: BaseException | None = None
    thread: threading.Thread | None = field(default=None, repr=False)

    def start(self, started: float) -> Writer:
        self.thread = threading.Thread(
            target=self._run, args=(started,), name=f"writer-{self.name}", daemon=True
        )
        self.thread.start()
        return self

    def finished(self) -> bool:
        return all(s.done >= s.total for s in self.streams)

    def _run(self, started: float) -> None:
        rng = random.Random(self.seed)  # noqa: S311 - reproducible demo traffic, not secrets
        try:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                # the same few statements thousands of times: plan each once (prepared)
                conn.execute("SET plan_cache_mode = force_generic_plan")
                while not self.stop.is_set() and not self.finished():
                    elapsed = time.monotonic() - started
                    wrote = False
                    for s in self.streams:
                        n = s.next_batch(elapsed, self.duration, rng)
                        if n <= 0:
                            continue
                        conn.execute(
                            s.spec.statement, {**self.params, "n": n, "base": s.done}, prepare=True
                        )
                        s.done += n
                        s.transactions += 1
                        wrote = True
                    if not wrote:
                        # nothing owed right now: wait for the clock, or for a stop request
                        self.stop.wait(0.02)
        # a thread's failure is handed to the main thread, which stops the demo with it
        except BaseException as exc:  # noqa: BLE001 - reported by the demo, never swallowed
            self.error = exc


@dataclass
class Heartbeats:
    """Heartbeat rows on one side at a steady rate, in a thread (the latency probes)."""

    dsn: str
    interval: float
    stop: threading.Event
    sent: int = 0
    error: BaseException | None = None
    thread: threading.Thread | None = field(default=None, repr=False)

    def start(self) -> Heartbeats:
        self.thread = threading.Thread(target=self._run, name="heartbeats", daemon=True)
        self.thread.start()
        return self

    def _run(self) -> None:
        try:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                while not self.stop.wait(self.interval):
                    conn.execute(HEARTBEAT)
                    self.sent += 1
        except BaseException as exc:  # noqa: BLE001 - reported by the demo, never swallowed
            self.error = exc


def send_heartbeat(dsn: str) -> int:
    """One heartbeat, committed; its id (the fence the other side waits for)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(HEARTBEAT).fetchone()
    assert row is not None
    return int(row[0])


def seed(
    dsn: str,
    statements: Sequence[tuple[str, str]],
    volumes: Volumes,
    progress: Callable[[str, int, float], Any] | None = None,
) -> None:
    """Run the generators' DDL and the seed statements, each in its own transaction."""
    params = volumes.params()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(GENERATORS)
        for table, statement in statements:
            t0 = time.monotonic()
            cur = conn.execute(statement, params)
            if progress:
                progress(table, cur.rowcount, time.monotonic() - t0)
        conn.execute("ANALYZE")
