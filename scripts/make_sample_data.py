"""Generates the bundled sample data: templated Korean news articles with one-sentence summaries.

The articles are synthetic (fictional companies, teams and people; no real news text). Each
summary restates the facts of the lead sentence (who, what, where, how much) in other words,
so a model can learn it from the article; the remaining sentences are supporting detail.

Usage, from the repository root:

    python -m scripts.make_sample_data --output-dir data/sample --seed 0
"""

import argparse
import random
from collections.abc import Callable

from kobart_flax.data_io import Example, write_tsv

CITIES = [
    "서울", "부산", "대구", "인천", "광주", "대전", "울산", "세종", "수원", "창원", "청주", "전주",
    "포항", "제주", "춘천", "강릉", "천안", "김해", "여수", "목포", "안동", "원주", "군산", "평택",
]  # fmt: skip
REGIONS = ["수도권", "강원 영동", "강원 영서", "충청권", "호남권", "영남권", "제주도", "남해안"]
COMPANIES = [
    "한빛전자", "누리반도체", "새솔화학", "다온모빌리티", "푸른바이오", "미르항공", "가온소프트",
    "하람식품", "은하통신", "바른건설", "초록에너지", "온길물류", "해솔제약", "라온게임즈",
    "비채유통", "아라조선", "마루철강", "다솜뷰티", "여울금융", "별빛엔터테인먼트",
]  # fmt: skip
TECH_COMPANIES = ["한빛전자", "가온소프트", "은하통신", "누리반도체", "라온게임즈", "다온모빌리티"]
TEAM_NICKNAMES = [
    "해오름", "청룡", "바다새", "불꽃", "돌풍", "은빛여우", "푸른늑대", "천둥", "한울", "백호",
]  # fmt: skip
SURNAMES = "김이박최정강조윤장임한오서신권황안송류홍"
GIVEN_NAMES = [
    "민준", "서연", "도윤", "지우", "현우", "수빈", "지훈", "하은", "준서", "예린",
    "성민", "유진", "태윤", "다인", "승현", "가영", "재원", "소율", "정호", "은비",
]  # fmt: skip

# (ministry, who benefits, what they receive): the policy template raises the amount.
POLICIES = [
    ("보건복지부", "기초연금 수급 노인", "기초연금"),
    ("교육부", "저소득층 대학생", "국가장학금"),
    ("국토교통부", "무주택 청년", "월세 지원금"),
    ("고용노동부", "중소기업 신입 사원", "취업 장려금"),
    ("환경부", "전기차 구매자", "구매 보조금"),
    ("농림축산식품부", "청년 농업인", "정착 지원금"),
    ("해양수산부", "연안 어업인", "연료비 지원금"),
    ("문화체육관광부", "지역 예술인", "창작 지원금"),
    ("산업통상자원부", "수출 중소기업", "물류비 지원금"),
    ("행정안전부", "영세 소상공인", "경영 안정 자금"),
]
PRICE_ITEMS = ["채소", "과일", "수산물", "외식", "가공식품", "석유류", "전기료", "축산물"]
BUILDINGS = ["아파트", "상가 건물", "물류 창고", "공장", "식당", "숙박업소", "전통시장", "주택"]
PRODUCT_KINDS = ["스마트폰", "노트북", "무선 이어폰", "스마트워치", "태블릿", "로봇청소기"]
PRODUCT_NAMES = ["아리", "노바", "루미", "제타", "코어", "휘슬", "오로라", "비전"]
FESTIVALS = ["벚꽃축제", "음식문화축제", "불꽃축제", "국제영화제", "재즈페스티벌", "빛축제"]
FESTIVAL_PLACES = ["시청 광장", "강변 공원", "문화예술회관 일대", "해변 특설무대", "구도심 거리"]

# Final consonants (jongseong index, 0 = none) of how a number's last part is read aloud:
# "...1" is 일 (ㄹ), "...10" is 십 (ㅂ), "...100" is 백 (ㄱ), "...1000" is 천 (ㄴ), and so on.
_DIGIT_FINALS = {"0": 21, "1": 8, "2": 0, "3": 16, "4": 0, "5": 0, "6": 1, "7": 8, "8": 8, "9": 0}
_TRAILING_ZERO_FINALS = {1: 17, 2: 1, 3: 4}  # 십, 백, 천; four or more zeros end in 만 (ㄴ)
_RIEUL = 8
_AFTER_VOWEL = {"이": "가", "은": "는", "을": "를", "과": "와"}


def _final_consonant(word: str) -> int:
    """Jongseong index of the last syllable as read aloud (Hangul or Arabic digits)."""
    last = word[-1]
    if "가" <= last <= "힣":
        return (ord(last) - ord("가")) % 28
    if last.isdigit():
        zeros = len(word) - len(word.rstrip("0"))
        if zeros == 0 or zeros == len(word):
            return _DIGIT_FINALS[last]
        return _TRAILING_ZERO_FINALS.get(zeros, 4)
    raise ValueError(f"cannot choose a particle after {word!r}")


def particle(word: str, after_consonant: str) -> str:
    """The form of a particle that follows ``word``, e.g. 이 or 가, 을 or 를.

    The particle is named by its after-a-consonant form: "이", "은", "을", "과" or "으로".
    """
    final = _final_consonant(word)
    if after_consonant == "으로":
        # (으)로 drops 으 after a vowel and also after ㄹ.
        return "으로" if final not in (0, _RIEUL) else "로"
    return after_consonant if final else _AFTER_VOWEL[after_consonant]


def josa(word: str, after_consonant: str) -> str:
    """``word`` with the particle attached in its right form: josa("서울", "을") is "서울을"."""
    return word + particle(word, after_consonant)


def _person(rng: random.Random) -> str:
    return rng.choice(SURNAMES) + rng.choice(GIVEN_NAMES)


def _team(rng: random.Random, exclude: str = "") -> str:
    while True:
        team = f"{rng.choice(CITIES)} {rng.choice(TEAM_NICKNAMES)}"
        if team != exclude:
            return team


# A template returns (lead sentences, supporting sentences, summary). The article is the lead
# plus a random, order-preserving subset of the supporting sentences.
Article = tuple[list[str], list[str], str]


def earnings(rng: random.Random) -> Article:
    company, ceo = rng.choice(COMPANIES), _person(rng)
    quarter, day = rng.randint(1, 4), rng.randint(1, 28)
    profit, change = rng.randint(12, 9800), rng.randint(2, 85)
    sales = profit * rng.randint(6, 15)
    grew = rng.random() < 0.6
    if rng.random() < 0.5:
        lead = [
            f"{josa(company, '은')} 올해 {quarter}분기 영업이익이 {profit}억 원으로 지난해 같은 "
            f"기간보다 {change}% {'늘었다' if grew else '줄었다'}고 {day}일 공시했다."
        ]
    else:
        lead = [
            f"{company}의 {quarter}분기 영업이익이 {profit}억 원을 기록했다.",
            f"1년 전과 비교하면 {change}% {'증가한' if grew else '감소한'} 수치다.",
        ]
    reason = rng.choice(
        ["주력 제품 판매 호조", "해외 수출 확대", "원가 절감 노력"]
        if grew
        else ["원자재 가격 상승", "국내 수요 둔화", "환율 변동"]
    )
    support = [
        f"같은 기간 매출은 {sales}억 원으로 집계됐다.",
        f"회사 측은 {reason}의 영향이 컸다고 설명했다.",
        f'{ceo} {company} 대표는 "하반기에도 신사업 투자를 이어 가겠다"고 말했다.',
        f"이날 {company} 주가는 전 거래일보다 {rng.randint(1, 9)}% "
        f"{'오른' if grew else '내린'} 채 거래를 마쳤다.",
        f"증권업계는 다음 분기 실적이 시장 기대치를 {'웃돌' if grew else '밑돌'} 것으로 내다봤다.",
    ]
    summary = (
        f"{company}의 {quarter}분기 영업이익은 {profit}억 원으로 작년보다 {change}% "
        f"{'증가했다' if grew else '감소했다'}."
    )
    return lead, support, summary


def consumer_prices(rng: random.Random) -> Article:
    month, day = rng.randint(1, 12), rng.randint(2, 6)
    rate = f"{rng.randint(0, 5)}.{rng.randint(1, 9)}"
    top, cheaper = rng.sample(PRICE_ITEMS, 2)
    lead = [
        f"통계청이 {day}일 발표한 '{month}월 소비자물가 동향'에 따르면 지난달 소비자물가지수는 "
        f"1년 전보다 {rate}% 올랐다."
    ]
    support = [
        f"품목별로는 {top} 가격이 {rng.randint(5, 20)}% 올라 상승 폭이 가장 컸다.",
        f"{cheaper} 가격은 오히려 {rng.randint(1, 6)}% 내렸다.",
        f"변동성이 큰 품목을 뺀 근원물가 상승률은 {rng.randint(1, 3)}.{rng.randint(0, 9)}%였다.",
        f"정부는 {top} 수급을 안정시키기 위해 비축 물량을 풀기로 했다.",
        "전문가들은 당분간 물가 상승세가 이어질 것으로 전망했다.",
    ]
    summary = f"{month}월 소비자물가가 1년 전에 비해 {rate}% 상승했다."
    return lead, support, summary


def rain_forecast(rng: random.Random) -> Article:
    region, day = rng.choice(REGIONS), rng.randint(1, 28)
    low_mm = rng.randint(1, 8) * 10
    high_mm = low_mm + rng.randint(2, 10) * 10
    lead = [f"기상청은 {day}일 {region}에 {low_mm}~{high_mm}mm의 비가 내릴 것이라고 예보했다."]
    support = [
        "비는 오전에 시작돼 밤늦게 대부분 그칠 것으로 보인다.",
        f"비가 오는 동안 순간 풍속 초속 {rng.randint(10, 20)}m의 강한 바람도 불겠다.",
        f"아침 최저기온은 {rng.randint(5, 15)}도, 낮 최고기온은 {rng.randint(16, 26)}도로 "
        "예상된다.",
        "기상청은 저지대 침수와 산사태 피해가 없도록 주의해 달라고 당부했다.",
        "비가 그친 뒤에는 기온이 떨어져 쌀쌀하겠다.",
    ]
    summary = f"{day}일 {region}에 최대 {high_mm}mm의 비가 올 전망이다."
    return lead, support, summary


def heat_wave(rng: random.Random) -> Article:
    city, day, temperature = rng.choice(CITIES), rng.randint(1, 28), rng.randint(33, 39)
    lead = [
        f"{day}일 {city}의 낮 최고기온이 {temperature}도까지 오르는 등 전국 곳곳에서 무더위가 "
        "이어지겠다."
    ]
    support = [
        f"기상청은 {josa(city, '을')} 포함한 {rng.randint(20, 90)}개 지역에 폭염경보를 내렸다.",
        "밤사이 기온이 25도 아래로 내려가지 않는 열대야도 나타나겠다.",
        "보건 당국은 한낮 야외 활동을 줄이고 물을 자주 마시라고 권고했다.",
        f"지난주 {city}에서는 온열질환자 {rng.randint(2, 30)}명이 응급실을 찾았다.",
        "더위는 이번 주말까지 계속될 것으로 보인다.",
    ]
    summary = f"{city}의 최고기온이 {temperature}도까지 오르며 더위가 계속된다."
    return lead, support, summary


def football_match(rng: random.Random) -> Article:
    winner = _team(rng)
    loser = _team(rng, exclude=winner)
    scorer, coach = _person(rng), _person(rng)
    day, match_round = rng.randint(1, 28), rng.randint(1, 38)
    losing_score = rng.randint(0, 2)
    winning_score = losing_score + rng.randint(1, 3)
    lead = [
        f"{josa(winner, '이')} {day}일 홈에서 열린 리그 {match_round}라운드 경기에서 "
        f"{josa(loser, '을')} {winning_score}대 {josa(str(losing_score), '으로')} 꺾었다."
    ]
    support = [
        f"{josa(scorer, '은')} 전반 {rng.randint(3, 44)}분 선제골을 터뜨리며 승리에 앞장섰다.",
        f"이날 경기장에는 관중 {rng.randint(3000, 40000):,}명이 찾았다.",
        f"이 승리로 {josa(winner, '은')} 리그 {rng.randint(1, 6)}위로 올라섰다.",
        f"{josa(loser, '은')} 후반 들어 반격에 나섰지만 결정적인 기회를 살리지 못했다.",
        f'{coach} 감독은 "선수들이 끝까지 집중력을 잃지 않았다"고 말했다.',
    ]
    summary = (
        f"{josa(winner, '이')} {josa(loser, '과')}의 경기에서 {winning_score}대 "
        f"{josa(str(losing_score), '으로')} 이겼다."
    )
    return lead, support, summary


def baseball_game(rng: random.Random) -> Article:
    winner = _team(rng)
    loser = _team(rng, exclude=winner)
    hitter, pitcher = _person(rng), _person(rng)
    losing_score = rng.randint(1, 6)
    winning_score = losing_score + rng.randint(1, 5)
    inning = rng.randint(1, 9)
    lead = [
        f"{josa(winner, '이')} {rng.randint(1, 28)}일 {josa(loser, '과')}의 홈 경기에서 "
        f"{hitter}의 {inning}회 결승 홈런에 힘입어 {winning_score}대 "
        f"{josa(str(losing_score), '으로')} 승리했다."
    ]
    support = [
        f"선발 투수 {josa(pitcher, '은')} {rng.randint(5, 8)}이닝 동안 삼진 "
        f"{rng.randint(3, 11)}개를 잡아냈다.",
        f"{josa(hitter, '은')} 이날 {rng.randint(3, 5)}타수 {rng.randint(2, 3)}안타를 기록했다.",
        f"{josa(loser, '은')} 9회 마지막 공격에서 주자를 내보냈지만 점수를 내지 못했다.",
        f"이날 구장에는 {rng.randint(8000, 24000):,}명의 관중이 들어찼다.",
        f"{josa(winner, '은')} 이번 승리로 {rng.randint(2, 7)}연승을 달렸다.",
    ]
    summary = (
        f"{hitter}의 홈런으로 {josa(winner, '이')} {josa(loser, '을')} {winning_score}대 "
        f"{josa(str(losing_score), '으로')} 눌렀다."
    )
    return lead, support, summary


def policy_change(rng: random.Random) -> Article:
    ministry, recipients, benefit = rng.choice(POLICIES)
    month, day = rng.randint(1, 12), rng.randint(1, 28)
    amount = rng.randint(3, 60) * 5
    lead = [
        f"{josa(ministry, '은')} {month}월부터 {recipients}에게 주는 {josa(benefit, '을')} "
        f"{amount}만 원으로 올린다고 {day}일 밝혔다."
    ]
    support = [
        f"지원 대상은 전국 약 {rng.randint(2, 90)}만 명으로 추산된다.",
        f"이번 조치에 드는 예산은 {rng.randint(120, 9000)}억 원 규모다.",
        f'{ministry} 관계자는 "물가 상승으로 커진 부담을 덜어 주려는 조치"라고 설명했다.',
        "신청은 가까운 주민센터나 온라인 누리집에서 할 수 있다.",
        "정부는 효과를 점검해 내년에 지원 범위를 넓히는 방안도 검토할 계획이다.",
        "일각에서는 재원 마련 방안이 구체적이지 않다는 지적도 나온다.",
    ]
    summary = f"{month}월부터 {recipients}의 {josa(benefit, '이')} {amount}만 원으로 오른다."
    return lead, support, summary


def building_fire(rng: random.Random) -> Article:
    city, building = rng.choice(CITIES), rng.choice(BUILDINGS)
    injured = rng.randint(1, 12)
    half_day = rng.choice(["오전", "오후"])
    lead = [
        f"{rng.randint(1, 28)}일 {half_day} {rng.randint(1, 11)}시 {rng.randint(1, 5) * 10}분께 "
        f"{city}의 한 {building}에서 불이 나 {injured}명이 다쳤다."
    ]
    support = [
        f"불은 {building} {rng.randint(1, 5)}층에서 시작된 것으로 추정된다.",
        f"소방당국은 인력 {rng.randint(30, 150)}명과 장비 {rng.randint(10, 40)}대를 투입해 "
        f"{rng.randint(20, 90)}분 만에 불을 모두 껐다.",
        "부상자들은 연기를 마셔 인근 병원으로 옮겨졌으며 생명에는 지장이 없는 것으로 알려졌다.",
        f"이 불로 소방서 추산 {rng.randint(2, 9)}천만 원의 재산 피해가 났다.",
        "경찰과 소방당국은 정확한 화재 원인을 조사하고 있다.",
    ]
    summary = f"{city} {building} 화재로 {injured}명이 부상을 입었다."
    return lead, support, summary


def product_launch(rng: random.Random) -> Article:
    company, kind = rng.choice(TECH_COMPANIES), rng.choice(PRODUCT_KINDS)
    product = f"{rng.choice(PRODUCT_NAMES)} {rng.randint(2, 9)}"
    month, day = rng.randint(1, 12), rng.randint(1, 28)
    lead = [
        f"{josa(company, '이')} {kind} 신제품 '{product}'{particle(product, '을')} "
        f"{month}월 {day}일 국내에 출시한다고 밝혔다."
    ]
    support = [
        f"출고가는 {rng.randint(20, 190)}만 원으로 이전 모델보다 {rng.randint(2, 15)}만 원 "
        "낮아졌다.",
        "신제품에는 자체 개발한 인공지능 기능이 처음으로 들어갔다.",
        f"배터리 사용 시간은 최대 {rng.randint(10, 40)}시간으로 늘었다.",
        f"회사는 올해 국내외에서 {rng.randint(5, 300)}만 대를 파는 것을 목표로 잡았다.",
        "사전 예약은 출시 일주일 전부터 온라인몰에서 진행된다.",
    ]
    summary = (
        f"{josa(company, '이')} 새 {kind} '{product}'{particle(product, '을')} "
        f"{month}월 {day}일 내놓는다."
    )
    return lead, support, summary


def festival(rng: random.Random) -> Article:
    city, name = rng.choice(CITIES), rng.choice(FESTIVALS)
    month, day, days = rng.randint(3, 11), rng.randint(1, 25), rng.randint(2, 10)
    title = f"제{rng.randint(2, 30)}회 {city} {name}"
    mayor = _person(rng)
    lead = [
        f"{city}시는 {month}월 {day}일부터 {days}일 동안 {rng.choice(FESTIVAL_PLACES)}에서 "
        f"'{title}'{particle(title, '을')} 연다고 밝혔다."
    ]
    support = [
        f"올해 축제에는 {rng.randint(2, 80)}만 명의 방문객이 찾을 것으로 예상된다.",
        f"행사 기간에는 공연과 체험 프로그램 등 {rng.randint(2, 15) * 10}여 개의 행사가 마련된다.",
        f"{city}시는 교통 혼잡을 줄이기 위해 임시 셔틀버스를 운행한다.",
        f'{mayor} {city}시장은 "시민과 관광객 모두가 즐길 수 있는 축제로 준비했다"고 말했다.',
        "입장은 무료이며 일부 체험 행사는 사전 예약이 필요하다.",
    ]
    summary = f"{month}월 {day}일부터 {days}일간 {city}에서 {josa(name, '이')} 열린다."
    return lead, support, summary


TEMPLATES: list[Callable[[random.Random], Article]] = [
    earnings,
    consumer_prices,
    rain_forecast,
    heat_wave,
    football_match,
    baseball_game,
    policy_change,
    building_fire,
    product_launch,
    festival,
]


def make_example(rng: random.Random, origin: str) -> Example:
    """One article of 3-6 sentences (lead + 2-5 supporting ones) and its summary."""
    lead, support, summary = rng.choice(TEMPLATES)(rng)
    kept_count = rng.randint(3 - len(lead), min(6 - len(lead), len(support)))
    kept = sorted(rng.sample(range(len(support)), kept_count))
    news = " ".join(lead + [support[index] for index in kept])
    return Example(news=news, summary=summary, origin=origin)


def make_examples(count: int, seed: int) -> list[Example]:
    """``count`` distinct examples; the same seed always gives the same list."""
    rng = random.Random(seed)
    examples: list[Example] = []
    seen: set[str] = set()
    while len(examples) < count:
        example = make_example(rng, origin=f"generated:{len(examples)}")
        if example.news not in seen:  # Unique articles keep train and test disjoint.
            seen.add(example.news)
            examples.append(example)
    return examples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", default="data/sample")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-size", type=int, default=4000)
    parser.add_argument("--test-size", type=int, default=200)
    args = parser.parse_args()
    examples = make_examples(args.train_size + args.test_size, args.seed)
    write_tsv(f"{args.output_dir}/train.tsv", examples[: args.train_size])
    write_tsv(f"{args.output_dir}/test.tsv", examples[args.train_size :])
    print(f"wrote {args.train_size} train and {args.test_size} test examples to {args.output_dir}")


if __name__ == "__main__":
    main()
